"""Batched augmentations: each op equals torchvision's per-image op, and the random parameters follow
the distributions of lightly's PIL reference (SimCLRViewTransform), measured end to end."""

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from sslguard.train.augment import (
    BatchAugment,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    gaussian_blur,
    keyed_uniforms,
    ssl_augmentations,
    view_keys,
)

N = 1500  # samples per statistical comparison; the tolerances below are > 4 standard errors


def _lightly_view(**kw):
    from lightly.transforms import SimCLRTransform

    base = dict(input_size=32, cj_prob=0.0, min_scale=1.0, random_gray_scale=0.0, gaussian_blur=0.0, hf_prob=0.0,
                normalize=None)
    base.update(kw)
    return SimCLRTransform(**base).transforms[0]


def _seed(s):
    torch.manual_seed(s)
    np.random.seed(s)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(12, 3, 20, 20, generator=g)


@pytest.mark.parametrize(
    "ours,theirs,lo,hi",
    [
        (adjust_brightness, TF.adjust_brightness, 0.6, 1.4),
        (adjust_contrast, TF.adjust_contrast, 0.6, 1.4),
        (adjust_saturation, TF.adjust_saturation, 0.6, 1.4),
        (adjust_hue, TF.adjust_hue, -0.1, 0.1),
    ],
)
def test_per_sample_jitter_ops_match_torchvision(images, ours, theirs, lo, hi):
    f = torch.linspace(lo, hi, images.shape[0])
    got = ours(images.clone(), f)
    want = torch.stack([theirs(images[i], float(f[i])) for i in range(images.shape[0])])
    assert torch.allclose(got, want, atol=1e-5)


def test_blur_matches_torchvision(images):
    sigma = torch.linspace(0.3, 2.0, images.shape[0])
    got = gaussian_blur(images, sigma)
    k = 2 * math.ceil(3 * float(sigma.max())) + 1
    want = torch.stack([TF.gaussian_blur(images[i], [k, k], [float(sigma[i])] * 2) for i in range(len(sigma))])
    assert torch.allclose(got, want, atol=1e-5)


def test_crop_and_flip_match_torchvision_resized_crop():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (16, 3, 40, 48), dtype=torch.uint8, generator=g)
    aug = BatchAugment(32, scale=(0.3, 1.0), cj_prob=0.0, gray_prob=0.0, mean=(0, 0, 0), std=(1, 1, 1))
    p = aug.sample(16, 40, 48, torch.Generator().manual_seed(2))
    got = aug.apply(x, p)
    for i in range(16):
        x0, y0, w, h = (int(v) for v in p.crop[i])
        want = TF.resized_crop(x[i].float() / 255, y0, x0, h, w, [32, 32], antialias=False)
        if p.flip[i]:
            want = want.flip(-1)
        # interior only: at the crop's border roi_align reads the pixel just outside the box where
        # crop-then-resize clamps to the box edge
        err = (got[i] - want)[:, 1:-1, 1:-1].abs().mean()
        if w <= 32 and h <= 32:  # upsampling: plain bilinear, must agree closely
            assert err < 2e-3
        else:  # shrinking: roi_align averages samples (box antialias), same picture within blur
            assert err < 0.08


@pytest.mark.parametrize("keyed", [False, True])
def test_crop_params_follow_torchvision_get_params(keyed):
    from torchvision.transforms import RandomResizedCrop

    aug = BatchAugment(32)
    if keyed:  # the per-image streams training uses
        ours = aug.sample_crops(N, 32, 32, keys=view_keys(3, 0, torch.arange(N), 0))
    else:
        ours = aug.sample_crops(N, 32, 32, torch.Generator().manual_seed(3))
    _seed(3)
    ref = torch.tensor([RandomResizedCrop.get_params(torch.zeros(3, 32, 32), [0.08, 1.0], [3 / 4, 4 / 3])
                        for _ in range(N)], dtype=torch.float32)  # (i, j, h, w)
    area_o, area_r = ours[:, 2] * ours[:, 3] / 1024, ref[:, 2] * ref[:, 3] / 1024
    ar_o, ar_r = ours[:, 2] / ours[:, 3], ref[:, 3] / ref[:, 2]
    q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    assert torch.allclose(area_o.quantile(q), area_r.quantile(q), atol=0.04)
    assert torch.allclose(ar_o.log().quantile(q), ar_r.log().quantile(q), atol=0.04)
    assert area_o.min() >= 0.06 and area_o.max() <= 1.0
    # x0 + w never leaves the image and the position is spread over the free range
    assert (ours[:, 0] + ours[:, 2] <= 32).all() and (ours[:, 1] + ours[:, 3] <= 32).all()


def _ramp_image(size=64):
    """R encodes x, G encodes y (0..255 over the image), B constant: crop boxes can be read back."""
    lin = np.linspace(0, 255, size)
    img = np.zeros((size, size, 3), np.uint8)
    img[..., 0] = np.round(lin)[None, :]
    img[..., 1] = np.round(lin)[:, None]
    img[..., 2] = 128
    return img


def _box_from_output(out: np.ndarray, size=64):
    """Approximate crop (area fraction, aspect ratio w/h) from a ramp image's transformed output (3,S,S) in [0,1]."""
    r, g = out[0] * 255 * (size - 1) / 255, out[1] * 255 * (size - 1) / 255
    s = out.shape[-1]
    w = abs(r[:, -1].mean() - r[:, 0].mean()) * s / (s - 1)
    h = abs(g[-1, :].mean() - g[0, :].mean()) * s / (s - 1)
    return (w * h) / size**2, w / max(h, 1e-6)


def test_crop_distribution_end_to_end_vs_lightly():
    img = _ramp_image()
    ref_t = _lightly_view(min_scale=0.08)
    _seed(4)
    ref = np.array([_box_from_output(ref_t(Image.fromarray(img)).numpy()) for _ in range(600)])
    aug = BatchAugment(32, cj_prob=0.0, gray_prob=0.0, hflip_prob=0.0, mean=(0, 0, 0), std=(1, 1, 1))
    x = torch.from_numpy(img).permute(2, 0, 1)[None].repeat(600, 1, 1, 1)
    out = aug(x, torch.Generator().manual_seed(4)).numpy()
    ours = np.array([_box_from_output(o) for o in out])
    q = [0.1, 0.25, 0.5, 0.75, 0.9]
    assert np.allclose(np.quantile(ours[:, 0], q), np.quantile(ref[:, 0], q), atol=0.05)
    assert np.allclose(np.quantile(np.log(ours[:, 1]), q), np.quantile(np.log(ref[:, 1]), q), atol=0.06)
    for arr in (ours, ref):
        assert arr[:, 0].min() > 0.05 and arr[:, 0].max() < 1.02
        assert np.exp(np.log(arr[:, 1]).min()) > 0.7 and arr[:, 1].max() < 1.43


def test_flip_and_grey_rates_match_lightly():
    img = _ramp_image(32)
    img[..., 2] = 255 - img[..., 0]  # colourful, so greyscale is visible
    ref_t = _lightly_view(hf_prob=0.5, random_gray_scale=0.2)
    _seed(5)
    flips_r, greys_r = [], []
    for _ in range(N):
        o = ref_t(Image.fromarray(img)).numpy()
        flips_r.append(o[0, :, 0].mean() > o[0, :, -1].mean())
        greys_r.append(np.abs(o[0] - o[2]).max() < 1e-6)
    aug = BatchAugment(32, scale=(1.0, 1.0), cj_prob=0.0, gray_prob=0.2, mean=(0, 0, 0), std=(1, 1, 1))
    x = torch.from_numpy(img).permute(2, 0, 1)[None].repeat(N, 1, 1, 1)
    o = aug(x, torch.Generator().manual_seed(5)).numpy()
    flips_o = o[:, 0, :, 0].mean(1) > o[:, 0, :, -1].mean(1)
    greys_o = np.abs(o[:, 0] - o[:, 2]).reshape(N, -1).max(1) < 1e-6
    for f, g in ((np.mean(flips_r), np.mean(greys_r)), (flips_o.mean(), greys_o.mean())):
        assert abs(f - 0.5) < 0.06, f
        assert abs(g - 0.2) < 0.05, g
    assert abs(np.mean(flips_r) - flips_o.mean()) < 0.08
    assert abs(np.mean(greys_r) - greys_o.mean()) < 0.06


def test_brightness_factor_distribution_matches_lightly():
    from scipy.stats import ks_2samp

    img = np.full((32, 32, 3), 100, np.uint8)
    ref_t = _lightly_view(cj_prob=0.8, cj_strength=1.0, cj_bright=0.4, cj_contrast=0.0, cj_sat=0.0, cj_hue=0.0)
    _seed(6)
    ref = np.array([ref_t(Image.fromarray(img)).numpy().mean() * 255 / 100 for _ in range(N)])
    aug = BatchAugment(32, scale=(1.0, 1.0), hflip_prob=0.0, gray_prob=0.0, brightness=0.4, contrast=0.0,
                       saturation=0.0, hue=0.0, mean=(0, 0, 0), std=(1, 1, 1))
    x = torch.from_numpy(img).permute(2, 0, 1)[None].repeat(N, 1, 1, 1)
    ours = aug(x, torch.Generator().manual_seed(6)).numpy().mean(axis=(1, 2, 3)) * 255 / 100
    for f in (ref, ours):
        assert f.min() > 0.59 and f.max() < 1.41
        assert abs(np.mean(np.abs(f - 1.0) < 1e-3) - 0.2) < 0.05  # jitter skipped with p = 0.2
    jit_r, jit_o = ref[np.abs(ref - 1) >= 1e-3], ours[np.abs(ours - 1) >= 1e-3]
    assert ks_2samp(jit_r, jit_o).pvalue > 0.001
    # applied factors are uniform on [0.6, 1.4]
    assert abs(np.quantile(jit_o, 0.25) - 0.8) < 0.04 and abs(np.quantile(jit_o, 0.75) - 1.2) < 0.04


@pytest.mark.parametrize("keyed", [False, True])
def test_jitter_order_is_a_random_permutation(keyed):
    aug = BatchAugment(32)
    if keyed:
        p = aug.sample(4000, 32, 32, keys=view_keys(7, 1, torch.arange(4000), 1))
    else:
        p = aug.sample(4000, 32, 32, torch.Generator().manual_seed(7))
    assert (p.order.sort(dim=1).values == torch.arange(4)).all()
    first = torch.bincount(p.order[:, 0], minlength=4).float() / 4000
    assert torch.allclose(first, torch.full((4,), 0.25), atol=0.03)
    assert abs(p.jitter.float().mean() - 0.8) < 0.03


def test_same_generator_seed_same_views_and_devices_agree():
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    a, b = ssl_augmentations("simclr", 32)
    v1 = a(x, torch.Generator().manual_seed(0))
    v2 = a(x, torch.Generator().manual_seed(0))
    v3 = a(x, torch.Generator().manual_seed(1))
    assert torch.equal(v1, v2) and not torch.equal(v1, v3)
    assert v1.shape == (8, 3, 32, 32) and v1.dtype == torch.float32


@pytest.mark.parametrize("method,size,view", [("simclr", 16, 0), ("byol", 32, 1), ("byol", 96, 1), ("simclr", 224, 0)])
def test_keyed_view_of_an_image_does_not_depend_on_its_batch(method, size, view):
    # the view of image i at epoch e is the same, bit for bit, in a batch of 8, in other splits and
    # orders, alone, and among other images (at 96 px: blur and solarize; at 224 px: blur, large reductions)
    g = torch.Generator().manual_seed(0)
    corpus = torch.randint(0, 256, (13, 3, size + 4, size + 4), dtype=torch.uint8, generator=g)
    aug = ssl_augmentations(method, size)[view]

    def views(positions):
        positions = torch.as_tensor(positions)
        return aug(corpus[positions], keys=view_keys(11, 2, positions, view))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    want = views(range(8))
    torch.set_num_threads(2)  # the rest on two threads: a one-image reduction could go parallel only then
    try:
        _check_batch_invariance(views, aug, corpus, view, want)
    finally:
        torch.set_num_threads(threads)


def _check_batch_invariance(views, aug, corpus, view, want):
    assert torch.equal(views(range(8)), want)  # one thread or two
    assert torch.equal(torch.cat([views(range(3)), views(range(3, 8))]), want)
    assert torch.equal(views(range(7, -1, -1)).flip(0), want)
    for i in (0, 5):
        assert torch.equal(views([i])[0], want[i])
    mixed = [8, 0, 9, 1, 2, 10, 3, 4, 11, 5, 6, 12, 7]  # other images in between
    got = views(mixed)
    assert torch.equal(got[[mixed.index(i) for i in range(8)]], want)
    # and every image gets its own view: no two rows equal, other epoch or seed or view changes them
    assert all(not torch.equal(want[i], want[j]) for i in range(8) for j in range(i))
    other_epoch = aug(corpus[:8], keys=view_keys(11, 3, torch.arange(8), view))
    other_seed = aug(corpus[:8], keys=view_keys(12, 2, torch.arange(8), view))
    other_view = aug(corpus[:8], keys=view_keys(11, 2, torch.arange(8), 1 - view))
    assert all(not torch.equal(o[i], want[i]) for o in (other_epoch, other_seed, other_view) for i in range(8))


def test_keys_are_distinct_and_keyed_uniforms_are_uniform():
    keys = np.concatenate([view_keys(s, e, np.arange(500), v) for s in (0, 1) for e in (0, 1) for v in (0, 1)])
    assert keys.dtype == np.uint64 and len(np.unique(keys)) == len(keys)
    u = keyed_uniforms(keys, 36).numpy()  # 4,000 streams x 36 draws
    assert u.min() >= 0.0 and u.max() < 1.0
    counts = np.histogram(u, bins=20, range=(0, 1))[0]
    assert np.abs(counts / u.size - 0.05).max() < 0.003  # > 5 standard errors
    corr = np.corrcoef(u.T)[np.triu_indices(36, 1)]  # draws of one stream are uncorrelated
    assert np.abs(corr).max() < 0.08
    # one key's row is the same whatever other keys come with it
    assert torch.equal(keyed_uniforms(keys[5:6], 36)[0], keyed_uniforms(keys, 36)[5])
    with pytest.raises(ValueError, match="keys"):
        BatchAugment(16).sample(4, 16, 16, keys=keys[:3])


def test_imagenet_size_recipes_have_blur_and_solarize():
    s0, s1 = ssl_augmentations("simclr", 96)
    assert s0.blur_prob == 0.5 and s0.brightness == 0.8
    b0, b1 = ssl_augmentations("byol", 96)
    assert (b0.blur_prob, b1.blur_prob, b0.solarize_prob, b1.solarize_prob) == (1.0, 0.1, 0.0, 0.2)
    c0, _ = ssl_augmentations("simclr", 32)
    assert c0.blur_prob == 0.0
    x = torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8)
    assert b0(x, torch.Generator().manual_seed(0)).shape == (4, 3, 96, 96)
    with pytest.raises(ValueError, match="ssl.method"):
        ssl_augmentations("moco", 32)


def test_solarize_inverts_bright_pixels():
    aug = BatchAugment(8, scale=(1.0, 1.0), hflip_prob=0.0, cj_prob=0.0, gray_prob=0.0, solarize_prob=1.0,
                       mean=(0, 0, 0), std=(1, 1, 1))
    x = torch.tensor([0.2, 0.8]).repeat(4).view(1, 1, 1, 8).expand(1, 3, 8, 8).contiguous()
    y = aug(x, torch.Generator().manual_seed(0))
    assert torch.allclose(y, torch.where(x >= 0.5, 1 - x, x), atol=1e-5)


def test_batched_augment_is_faster_than_lightly_pil():
    import time

    from lightly.transforms import SimCLRTransform

    x = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    aug, _ = ssl_augmentations("simclr", 32)
    gen = torch.Generator().manual_seed(0)
    aug(x, gen)
    t = time.perf_counter()
    aug(x, gen)
    ours = time.perf_counter() - t
    ref = SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0).transforms[0]
    pil = [Image.fromarray(x[i].permute(1, 2, 0).numpy()) for i in range(64)]
    t = time.perf_counter()
    for im in pil:
        ref(im)
    theirs = (time.perf_counter() - t) * 4
    assert ours < theirs, (ours, theirs)


@pytest.mark.parametrize("method,size,view", [("simclr", 32, 0), ("byol", 32, 1), ("byol", 96, 0), ("byol", 96, 1)])
def test_masked_pixel_path_gives_the_gathered_paths_images(method, size, view):
    # the GPU path (every op on the whole batch, kept per sample by torch.where, no host sync) and the
    # CPU path (each op on the samples it applies to) make the same views; at 96 px blur and solarize too
    aug = ssl_augmentations(method, size, min_scale=0.2)[view]
    x = torch.randint(0, 256, (24, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    p = aug.sample(24, size, size, keys=view_keys(5, 1, torch.arange(24), view))
    assert p.jitter.any() and not p.jitter.all()  # both kinds of sample are in the batch
    gathered, masked = aug.apply(x, p, masked=False), aug.apply(x, p, masked=True)
    torch.testing.assert_close(masked, gathered, atol=1e-6, rtol=0)


def test_params_pack_into_one_block_and_back_exactly():
    aug = ssl_augmentations("byol", 96)[1]
    p = aug.sample(40, 120, 100, keys=view_keys(0, 0, torch.arange(40), 1))
    q = type(p).unpack(p.pack())
    for name in ("crop", "flip", "jitter", "factors", "order", "gray", "blur", "sigma", "solarize"):
        a, b = getattr(p, name), getattr(q, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert p.to("cpu") is p
