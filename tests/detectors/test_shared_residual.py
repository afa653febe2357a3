"""PoisonCAM's whole-image eraser check asks what the top probes' residuals have in *common* (issue 17): a
cluster of detailed images takes in any image whose detail is raised, so each member's own residual pulls,
while a trigger is one pattern in every poison and its residuals' mean still pulls. Both corpora here are
made by hand under an encoder that groups images by how much fine detail they carry (a cluster of fine
textures, as found on Imagenette photos at 224 px) and by colour."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslguard.cluster import kmeans
from sslguard.data.datasets import ArrayDataset
from sslguard.data.transforms import to_float
from sslguard.detectors import get_detector
from sslguard.embed import embed_dataset

COLOURS = [(200, 60, 60), (60, 200, 60), (60, 60, 200), (150, 150, 150)]


class DetailEncoder(torch.nn.Module):
    """Embedding ``[3 d, (1 - d) * mean colour]``: ``d`` (0 to 1) rises steeply with the mean energy of the
    image's fine detail (what a 3x3 box blur removes) around ``e0``; below it the colour decides."""

    def __init__(self, e0: float = 1.0):
        super().__init__()
        self.e0 = e0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        hp = x - F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        return torch.cat([hp.pow(2).mean(1, keepdim=True), x], dim=1)

    def pool(self, raw: torch.Tensor) -> torch.Tensor:
        d = torch.sigmoid(10 * (torch.log(raw[:, 0].mean((1, 2)) + 1e-12) - np.log(self.e0)))[:, None]
        return torch.cat([3 * d, (1 - d) * raw[:, 1:].mean((2, 3))], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x))


def _corpus(shared_pattern: bool, seed: int = 0):
    """60 smooth images of each colour and 60 detailed ones (+-50 of noise on a colour): each with its own
    noise, or all with one noise pattern (a blend-like trigger). Returns the dataset, the detailed images'
    positions and an encoder whose ``e0`` sits one e-fold under the detailed images' median energy."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(-20, 20, 32)[None, :, None]
    smooth = [np.clip(np.array(c)[None, None] + ramp + rng.normal(0, 3, 3), 0, 255) * np.ones((32, 32, 3))
              for c in COLOURS for _ in range(60)]
    one = rng.uniform(-50, 50, (32, 32, 3))
    detailed = [np.clip(np.array(COLOURS[i % 4])[None, None] + (one if shared_pattern else rng.uniform(-50, 50, (32, 32, 3))),
                        0, 255) for i in range(60)]
    images = np.stack(smooth + detailed).round().astype(np.uint8)
    ds = ArrayDataset(images, np.r_[np.repeat(np.arange(4), 60), np.zeros(60, int)], [str(c) for c in COLOURS])
    enc = DetailEncoder()
    x = torch.as_tensor(images[240:]).permute(0, 3, 1, 2)
    enc.e0 = float(enc.forward_features(to_float(x))[:, 0].mean((1, 2)).median()) / np.e
    return ds, np.arange(240, 300), enc.eval()


@pytest.fixture(scope="module", params=[False, True], ids=["own_detail", "one_pattern"])
def detail_case(request):
    ds, detailed, enc = _corpus(request.param)
    _, emb = embed_dataset(enc, ds, normalize=True, progress=False)
    clusters = kmeans(emb, 5, seed=0)
    pc = get_detector("poisoncam")(backbone=enc, dataset=ds, embeddings=emb, clusters=clusters, n_probe=8,
                                   n_null=48, classifier=False, seed=0)
    (c,) = np.unique(clusters.assignments[detailed])  # the detailed images form one cluster
    assert (clusters.assignments == c).sum() == len(detailed)
    return request.param, int(c), pc


def test_a_detail_cluster_passes_the_old_checks_but_not_the_shared_one(detail_case):
    shared_pattern, c, pc = detail_case
    s = pc.info["cluster_stats"][c]
    rate, control = s["residual_rate"]["lowpass"], s["residual_control_rate"]["lowpass"]
    # each member's residual pulls and random images' residuals do not: the rate and control alone would confirm
    assert rate >= 0.5 and control <= rate / 2, s
    if shared_pattern:
        assert s["residual_shared_rate"]["lowpass"] >= 0.5, s
        assert c in pc.info["confirmed_clusters"] and pc.info["confirmed_erasers"][c] == "lowpass", s
    else:  # the mean of eight unrelated noises keeps an eighth of their energy and pulls nothing
        assert s["residual_shared_rate"]["lowpass"] < 0.5, s
        assert pc.info["confirmed_clusters"] == [] and not pc.flagged.any(), s
