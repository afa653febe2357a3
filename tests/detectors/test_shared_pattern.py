"""PoisonCAM's shared-pattern path (sslguard.detectors.global_trigger, issue 17): a blended trigger the encoder
learned too weakly for a majority of pasted images to join its cluster (a noise blend on CIFAR-10). The corpora
are made by hand under an encoder that places an image by how well its fine detail matches one noise pattern
(the trigger it "learned") and otherwise by colour: a smooth image carrying the pattern matches, a textured one
does not, so adding the pattern pulls only the smooth third of the other images in."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslguard.cluster import kmeans
from sslguard.data.datasets import ArrayDataset
from sslguard.data.transforms import to_float
from sslguard.detectors import get_detector
from sslguard.embed import embed_dataset
from sslguard.erasers import shared_share
from sslguard.metrics import detection_metrics

COLOURS = [(200, 60, 60), (60, 200, 60), (60, 60, 200)]
N = 60  # images per group


def _hp(x: torch.Tensor) -> torch.Tensor:
    return x - F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class PatternEncoder(torch.nn.Module):
    """Embedding ``[3 d, (1 - d) * mean colour]`` with ``d`` rising steeply where the cosine between the image's
    fine detail and the pattern's passes 0.7 (a 16 px window of the pattern reaches 0.5)."""

    def __init__(self, pattern: np.ndarray):
        super().__init__()
        p = to_float(torch.as_tensor(128 + pattern).round().permute(2, 0, 1)[None].to(torch.uint8))
        self.register_buffer("p", _hp(p - to_float(torch.full_like(p, 128).to(torch.uint8))))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        h = _hp(x)
        return torch.cat([(h * self.p).sum(1, keepdim=True), h.pow(2).sum(1, keepdim=True), x], dim=1)

    def pool(self, raw: torch.Tensor) -> torch.Tensor:
        cos = raw[:, 0].sum((1, 2)) / (raw[:, 1].sum((1, 2)).sqrt() * self.p.norm() + 1e-9)
        d = torch.sigmoid(20 * (cos - 0.7))[:, None]
        return torch.cat([3 * d, (1 - d) * raw[:, 2:].mean((2, 3))], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x))


def _smooth(rng, colour) -> np.ndarray:
    """A colour with a random smooth ramp: content that members do not share."""
    yy, xx = np.mgrid[0:32, 0:32] / 31.0 - 0.5
    a, b = rng.uniform(-60, 60, 2)
    return np.array(colour)[None, None] + (a * xx + b * yy)[..., None]


def _corpus(variant: str, seed: int = 0):
    """One smooth and two textured groups (own noise of +-60) of each colour, and ``N`` poisons: smooth images
    of the first colour with one pattern (``"one_pattern"``), each with its own (``"own_pattern"``), or with
    one sharp cross and a faint noise of their own (``"aligned"``: aligned content, as digits' strokes)."""
    rng = np.random.default_rng(seed)
    pattern = rng.uniform(-50, 50, (32, 32, 3))
    imgs = []
    for c in COLOURS:
        imgs += [_smooth(rng, c) for _ in range(N)]
        imgs += [np.array(c)[None, None] + rng.uniform(-60, 60, (32, 32, 3)) for _ in range(2 * N)]
    cross = np.zeros((32, 32, 3))
    cross[14:18, 4:28] = cross[4:28, 14:18] = 80
    for _ in range(N):
        base = _smooth(rng, COLOURS[0])
        if variant == "one_pattern":
            imgs.append(base + pattern)
        elif variant == "own_pattern":
            imgs.append(base + rng.uniform(-50, 50, (32, 32, 3)))
        else:
            imgs.append(np.array(COLOURS[0])[None, None] + cross + rng.normal(0, 4, (32, 32, 3)))
    images = np.clip(np.stack(imgs), 0, 255).round().astype(np.uint8)
    n_clean = len(images) - N
    labels = np.r_[np.repeat(np.arange(3), 3 * N), np.zeros(N, int)]
    truth = np.r_[np.zeros(n_clean, bool), np.ones(N, bool)]
    return ArrayDataset(images, labels, [str(c) for c in COLOURS]), truth, PatternEncoder(pattern).eval()


def _run(variant: str):
    ds, truth, enc = _corpus(variant)
    _, emb = embed_dataset(enc, ds, normalize=True, progress=False)
    clusters = kmeans(emb, 6, seed=0)
    pc = get_detector("poisoncam")(backbone=enc, dataset=ds, embeddings=emb, clusters=clusters, n_probe=8,
                                   n_null=64, classifier=False, seed=0)
    return truth, clusters, pc


@pytest.fixture(scope="module")
def one_pattern():
    return _run("one_pattern")


@pytest.fixture(scope="module", params=["own_pattern", "aligned"])
def no_pattern(request):
    return request.param, *_run(request.param)


def test_shared_share_estimates_the_common_patterns_share():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 32, 32, generator=g)
    assert shared_share(s.expand(8, 3, 32, 32)) == pytest.approx(1.0)
    assert abs(shared_share(torch.randn(64, 3, 32, 32, generator=g))) < 0.02  # unrelated: about 0, whatever n
    for n in (8, 64):  # one pattern with as much unrelated energy: a half
        assert shared_share(s + torch.randn(n, 3, 32, 32, generator=g)) == pytest.approx(0.5, abs=0.06)
    assert shared_share(torch.zeros(4, 3)) == 0.0 and np.isnan(shared_share(s[None]))


def test_a_weakly_learned_blend_is_confirmed_by_its_shared_pattern_and_flagged(one_pattern):
    truth, clusters, pc = one_pattern
    (c,) = np.unique(clusters.assignments[truth])  # the encoder gathers the poisons
    s = pc.info["cluster_stats"][int(c)]
    assert s["residual_rate"]["lowpass"] < 0.5, s  # no majority joins: the residual path cannot confirm it
    rec = s["shared_pattern"]["lowpass"]
    assert rec["shared"] >= 0.5 and rec["shared"] > rec["content_shared"], rec
    assert rec["rate"] >= 2 * rec["control_rate"] and rec["p"] <= 0.01, rec
    assert pc.info["confirmed_clusters"] == [int(c)]
    assert s["confirmed_by"] == "eraser lowpass+shared pattern", s
    # step 3 by the eraser: erasing the pattern takes a poison out of the cluster, a clean image has nothing to lose
    # (its drops are ~1e-6 here, so the MAD cut of this toy encoder is no test of precision; CIFAR-10's is in the
    # benchmark)
    m = detection_metrics(pc.scores, pc.flagged, truth)
    assert pc.info["mode"] == "confirmed_cluster_eraser" and m["recall"] == 1.0 and m["auroc"] == 1.0, m
    assert "share one fine pattern" in pc.info["evidence"], pc.info["evidence"]  # the report says how it was found


def test_own_noise_or_aligned_content_is_not_a_shared_pattern(no_pattern):
    variant, truth, clusters, pc = no_pattern
    stats = pc.info["cluster_stats"]
    recs = [r for q in stats for r in stats[q].get("shared_pattern", {}).values()]
    assert recs and not any(r["passed"] for r in recs)
    assert pc.info["confirmed_clusters"] == [] and not pc.flagged.any()
    if variant == "aligned":  # the cross's edges are shared, but so is the cross: content, not a blended trigger
        (c,) = np.unique(clusters.assignments[truth])
        rec = stats[int(c)]["shared_pattern"]["lowpass"]
        assert rec["shared"] >= 0.5 and rec["content_shared"] >= rec["shared"], rec
    else:  # every member's own noise: nothing in common
        assert max(r["shared"] for r in recs) < 0.5
