"""Whole-image erasers (sslguard.erasers): what each removes and keeps, and the residual arithmetic."""

import math

import numpy as np
import pytest
import torch

from sslguard.erasers import ERASERS, add_residuals, erase, erased_uint8, residuals


def _smooth(side: int = 32) -> torch.Tensor:
    """A smooth colour ramp: content a low-pass should keep."""
    y, x = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    img = torch.stack([60 + 4 * x, 200 - 3 * y, 100 + 2 * (x + y) // 2]).clamp(0, 255)
    return img[None].to(torch.uint8)


@pytest.mark.parametrize("eraser", ERASERS)
def test_residual_plus_erased_is_the_image(eraser):
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    assert torch.allclose(erase(x, eraser) + residuals(x, eraser), x.float(), atol=1e-3)


def test_lowpass_removes_pixel_noise_and_keeps_a_smooth_image():
    base = _smooth()
    noise = torch.as_tensor(np.random.default_rng(0).integers(-40, 41, (1, 3, 32, 32)))
    noisy = (base.int() + noise).clamp(0, 255).to(torch.uint8)
    inner = (slice(None), slice(None), slice(6, 26), slice(6, 26))  # away from the reflected border
    err_after = (erase(noisy, "lowpass") - base.float())[inner].abs().mean()
    err_before = (noisy.float() - base.float())[inner].abs().mean()
    assert err_after < 0.25 * err_before
    assert (erase(base, "lowpass") - base.float())[inner].abs().max() < 2.0


def test_lowpass_erases_most_of_a_sig_like_sinusoid():
    j = torch.arange(32).float()
    stripes = (128 + 40 * torch.sin(2 * math.pi * j * 6 / 32)).expand(1, 3, 32, 32)
    kept = (erase(stripes.round().to(torch.uint8), "lowpass") - 128)[..., 8:24].abs().max() / 40
    assert kept < 0.3


def test_chroma_eraser_keeps_grey_images_and_luminance():
    grey = torch.randint(0, 256, (1, 1, 32, 32), dtype=torch.uint8).expand(1, 3, 32, 32)
    assert (erase(grey, "chroma") - grey.float()).abs().max() < 1e-3  # no chroma to remove
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    luma = torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]
    assert ((erase(x, "chroma") * luma).sum(1) - (x.float() * luma).sum(1)).abs().max() < 1e-3


def test_add_residuals_rounds_and_clips_to_uint8():
    x = torch.full((2, 3, 4, 4), 250, dtype=torch.uint8)
    out = add_residuals(x, torch.full((3, 4, 4), 10.4))
    assert out.dtype == torch.uint8 and int(out.max()) == 255
    assert erased_uint8(x, "lowpass").dtype == torch.uint8


def test_unknown_eraser_is_a_clear_error():
    with pytest.raises(ValueError, match="eraser must be one of"):
        erase(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "median")
