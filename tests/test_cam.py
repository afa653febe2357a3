import numpy as np
import pytest
import torch

from sslguard.cam import ClusterModel, best_window, grad_cam, mask_windows, search_windows, sliding_boxes
from sslguard.models import create_backbone


def test_best_window_finds_planted_hot_region():
    maps = torch.rand(3, 32, 32) * 0.1
    planted = [(3, 17), (20, 2), (11, 11)]
    for i, (x, y) in enumerate(planted):
        maps[i, y:y + 8, x:x + 8] += 1.0
    boxes, mass = best_window(maps, 8)
    assert boxes.tolist() == [[x, y, 8, 8] for x, y in planted]
    assert (mass > 64).all()


def _bright_square_model():
    """convnet4 whose embedding is dominated by one channel that fires on bright pixels: a cluster model
    with a 'bright' centroid then owes its score to wherever the image is bright."""
    torch.manual_seed(0)
    bb = create_backbone("convnet4", width=4).eval()
    with torch.no_grad():
        for m in bb.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.zero_()
                m.weight[0, 0, 1, 1] = 1.0  # channel 0 passes the red channel's centre pixel through
        for m in bb.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.zero_(), m.running_var.fill_(1.0)
                m.bias.zero_()
                m.bias[1:] = 0.05  # other channels: a small constant, so the embedding is never all zero
    return bb


def test_grad_cam_window_finds_planted_trigger():
    bb = _bright_square_model()
    d = bb.feature_dim
    centroids = np.zeros((2, d), np.float32)
    centroids[0, 0] = 1.0  # "bright" cluster
    centroids[1, 1:] = 1.0  # "dark" cluster
    model = ClusterModel(bb, centroids)
    imgs = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    imgs[0, :, 4:12, 18:26] = 255
    imgs[1, :, 20:28, 2:10] = 255
    cam, scores, targets = grad_cam(model, imgs, torch.zeros(2, dtype=torch.long))
    boxes, _ = best_window(cam, 8)
    for (x, y, w, h), (tx, ty) in zip(boxes.tolist(), [(18, 4), (2, 20)]):
        assert abs(x - tx) <= 4 and abs(y - ty) <= 4, (x, y)
    assert cam.shape == (2, 32, 32) and (cam >= 0).all()
    # masking that window lowers the bright cluster's score; the exhaustive search finds the square
    grid = sliding_boxes((32, 32), 8, 2)
    drop, best, base = search_windows(model, imgs, torch.zeros(2, dtype=torch.long), grid)
    assert (drop > 0.1).all()
    assert best[:, :2].tolist() == [[18, 4], [2, 20]]


def test_mask_windows_only_touches_the_box():
    imgs = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    out = mask_windows(imgs, np.array([[2, 3, 4, 5], [0, 0, 16, 1]]), fill="grey")
    changed = (out != imgs).any(1)
    assert (out[0, :, 3:8, 2:6] == 128).all() and (out[1, :, 0:1, :] == 128).all()
    inside = torch.zeros_like(changed)
    inside[0, 3:8, 2:6] = True
    inside[1, 0:1, :] = True
    assert not changed[~inside].any()


def test_context_fill_erases_a_patch_with_its_surroundings():
    """A bright patch on a dark image: the context fill leaves no trace of it (the blurred copy keeps
    some of its colour in the box), and nothing outside the box changes."""
    img = torch.full((1, 3, 16, 16), 10, dtype=torch.uint8)
    img[:, :, 4:10, 5:11] = 250
    box = np.array([[5, 4, 6, 6]])
    ctx = mask_windows(img, box, fill="context")
    blur = mask_windows(img, box, fill="blur")
    assert int(ctx[:, :, 4:10, 5:11].max()) == 10
    assert int(blur[:, :, 4:10, 5:11].max()) > 40
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[4:10, 5:11] = False
    assert torch.equal(ctx[:, :, outside], img[:, :, outside])
    with pytest.raises(ValueError, match="fill"):
        mask_windows(img, box, fill="paint")


def test_window_consistency_tells_copies_of_one_pattern_from_different_crops():
    from sslguard.cam import window_consistency

    g = torch.Generator().manual_seed(0)
    pattern = torch.randint(0, 256, (3, 12, 12), generator=g, dtype=torch.uint8)
    copies, others = [], []
    offsets = [(0, 0), (1, 2), (2, 1), (3, 3), (0, 3), (3, 0), (1, 1), (2, 2)]  # each below the stride (4 px)
    for y, x in offsets:  # the pattern in a 16 px crop of a quieter background
        crop = torch.randint(96, 160, (3, 16, 16), generator=g, dtype=torch.uint8)
        crop[:, y:y + 12, x:x + 12] = pattern
        copies.append(crop)
        others.append(torch.randint(0, 256, (3, 16, 16), generator=g, dtype=torch.uint8))
    assert window_consistency(copies, max_shift=4) > 0.9
    assert window_consistency(copies, max_shift=0) < 0.5  # the shift search is what aligns them
    assert window_consistency(others, max_shift=4) < 0.3
    assert window_consistency(copies[:6] + others[:2], max_shift=4) > 0.9  # two crops that missed it do not count
    assert window_consistency(copies[:2] + others[:6], max_shift=4) < 0.3  # one pair of copies is not a pattern
    flat = [torch.full((3, 16, 16), 7, dtype=torch.uint8)] * 2
    assert window_consistency(flat, max_shift=4) == -1.0  # a flat crop correlates with nothing
    assert np.isnan(window_consistency(copies[:1], max_shift=4))
