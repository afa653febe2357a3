"""The colour control of the paste evidence: a window must pull images into its cluster by its pattern; when a
flat copy of its mean colour pulls as well, the encoder groups a colour, and neither SSL detector flags (on by
default in PatchSearch, an option in PoisonCAM)."""

import numpy as np
import pytest
from PIL import Image

from sslguard.detectors import get_detector
from sslguard.detectors.corpus import Corpus
from sslguard.testing import PLANTED_ENCODER_K, embed_and_cluster, planted_patch_encoder_case


@pytest.fixture(scope="module")
def flat_case(tmp_path_factory):
    """The planted case with a flat orange square as its trigger: the encoder learns the colour (the triggered
    images are its 11th class), so the 'trigger' is a colour, as blue sky is for a colour-driven encoder."""
    path = tmp_path_factory.mktemp("trigger") / "orange.png"
    Image.new("RGB", (10, 10), (255, 140, 0)).save(path)
    c = planted_patch_encoder_case(seed=0, trigger_path=str(path))
    return (c, *embed_and_cluster(c.backbone, c.dataset, k=PLANTED_ENCODER_K))


def test_flat_copies_keep_the_mean_colour_only():
    import torch

    p = torch.arange(3 * 4 * 4, dtype=torch.uint8).view(3, 4, 4)
    (f,) = Corpus.flat_copies([p])
    assert f.dtype == p.dtype and f.shape == p.shape
    assert (f == f[:, :1, :1]).all() and np.allclose(f[:, 0, 0].float(), p.float().mean((1, 2)).round())


def test_a_colour_the_encoder_groups_is_no_trigger_evidence(flat_case):
    c, emb, clusters = flat_case
    pc = get_detector("poisoncam")(backbone=c.backbone, dataset=c.dataset, embeddings=emb, clusters=clusters,
                                   n_probe=8, n_null=48, classifier_images=300, classifier_epochs=2, seed=0,
                                   colour_control=True)  # off by default in PoisonCAM (its Limits)
    stats = pc.info["cluster_stats"]
    trig = set(np.unique(clusters.assignments[c.truth]).tolist())
    pulled = [q for q in trig if stats.get(q, {}).get("paste_rate", 0) >= 0.5]
    # the windows do pull (the encoder learned the square) ... but so do their flat copies, so nothing is confirmed
    assert pulled and all(stats[q]["flat_paste_rate"] >= 0.5 for q in pulled), stats
    assert pc.info["confirmed_clusters"] == [] and not pc.flagged.any()
    ps = get_detector("patchsearch")(backbone=c.backbone, dataset=c.dataset, embeddings=emb, clusters=clusters,
                                     test_per_cluster=4, samples_per_round=3, final_samples=12, n_top_windows=8,
                                     classifier_images=300, classifier_epochs=2, seed=0)
    assert ps.info["top_window_pull_rate"] >= 0.5 and ps.info["flat_pull_rate"] >= 0.5, ps.info["evidence"]
    assert "colour" in ps.info["evidence"] and not ps.flagged.any()


def test_a_patterned_trigger_passes_the_colour_control():
    c = planted_patch_encoder_case(seed=0)
    emb, clusters = embed_and_cluster(c.backbone, c.dataset)
    pc = get_detector("poisoncam")(backbone=c.backbone, dataset=c.dataset, embeddings=emb, clusters=clusters,
                                   n_probe=8, n_null=48, classifier=False, seed=0, colour_control=True)
    flats = [pc.info["cluster_stats"][q]["flat_paste_rate"] for q in pc.info["confirmed_clusters"]]
    assert flats and max(flats) < 0.5, flats
