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
    """The planted case with a flat orange square as its trigger, larger (16 px) than both detectors' 12 px
    windows: the encoder learns the colour (the triggered images are its 11th class), and a window inside the
    square is that colour alone, as blue sky is for a colour-driven encoder. (A 10 px square is no such case:
    a window holding it and its surroundings pulled 0.97-1.00 against its flat copy's 0.80-0.83.)"""
    path = tmp_path_factory.mktemp("trigger") / "orange.png"
    Image.new("RGB", (16, 16), (255, 140, 0)).save(path)
    c = planted_patch_encoder_case(seed=0, trigger_size=16, trigger_path=str(path))
    return (c, *embed_and_cluster(c.backbone, c.dataset, k=PLANTED_ENCODER_K))


def test_flat_copies_keep_the_mean_colour_only():
    import torch

    p = torch.arange(3 * 4 * 4, dtype=torch.uint8).view(3, 4, 4)
    (f,) = Corpus.flat_copies([p])
    assert f.dtype == p.dtype and f.shape == p.shape
    assert (f == f[:, :1, :1]).all() and np.allclose(f[:, 0, 0].float(), p.float().mean((1, 2)).round())


def test_a_colour_the_encoder_groups_is_no_trigger_evidence(flat_case):
    """PatchSearch's 12 px windows lie inside the 16 px square: colour alone, and their flat copies pull as
    many (0.59-0.69 against 0.52-0.69 on three kernel sets, 1 and 2 threads). PoisonCAM (its control is off by
    default) is not asserted here: step 2b's 16 px windows straddle the square's edge, a pattern, and its flat
    copies' pull decides by float order (0.99 against 0.95, Fisher p 0.006, confirmed on SSE4.1 with one thread;
    p 0.03-0.38 elsewhere; ``benchmarks/defaults.md``, colour control)."""
    c, emb, clusters = flat_case
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


def test_flat_copies_explain_a_pull_only_when_the_pattern_adds_little_to_it():
    """Abbott's correction with a significance test: of the images the flat copies leave out, the windows must
    pull a majority, and more than the copies (Fisher p <= 0.01). Measured: blue sky on clean CIFAR-10 (0.89
    vs 0.83), an HTBA trigger on the quickstart's digits with target class 3 (0.99 vs 0.62), a 16 px flat
    trigger's 16 px windows (0.98 vs 0.96 over 256 pastes: 5 of 9 left-out images, no evidence)."""
    from sslguard.detectors.corpus import colour_explains

    assert colour_explains(0.89, 0.83, 0.5, 320)  # a third of the rest: the colour does the pulling
    assert not colour_explains(0.99, 0.62, 0.5, 320)  # nearly all the rest: the pattern does
    assert colour_explains(252 / 256, 247 / 256, 0.5, 256)  # over half the rest, but 5 images of 9 prove nothing
    assert colour_explains(1.0, 1.0, 0.5, 256)  # a flat trigger is its own flat copy
    assert not colour_explains(0.6, 0.3, 0.5, 256) and not colour_explains(0.6, None, 0.5, 256)  # no majority
