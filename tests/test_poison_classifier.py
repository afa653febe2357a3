import numpy as np
import pytest
import torch

from sslguard.testing import planted_patch_encoder_case
from sslguard.cam import load_uint8
from sslguard.metrics import detection_metrics
from sslguard.poison_classifier import classifier_logits, crop_windows, paste_many, train_poison_classifier


class _Images:
    """The slice of a detector's corpus the classifier uses: images by position, a device, a batch size,
    the accelerator (none: one process) and the chunk map (a plain one)."""

    accelerator = None

    def __init__(self, dataset):
        self.dataset, self.device, self.batch_size = dataset, "cpu", 256

    def images(self, pos):
        return load_uint8(self.dataset, np.asarray(pos))

    def map(self, fn, chunks):
        return [fn(c) for c in chunks]


@pytest.fixture(scope="module")
def case():
    return planted_patch_encoder_case(seed=0)


def test_crop_and_paste_move_exactly_the_window():
    imgs = torch.arange(2 * 3 * 8 * 8, dtype=torch.int64).view(2, 3, 8, 8).to(torch.uint8)
    patches = crop_windows(imgs, np.array([[1, 2, 3, 4], [0, 0, 2, 2]]))
    assert patches[0].shape == (3, 4, 3) and torch.equal(patches[0], imgs[0, :, 2:6, 1:4])
    out = paste_many(imgs, patches, np.array([[5, 4], [6, 6]]))
    assert torch.equal(out[0, :, 4:8, 5:8], patches[0]) and torch.equal(out[1, :, 6:8, 6:8], patches[1])
    assert torch.equal(imgs[0, :, 2:6, 1:4], patches[0])  # a copy: the sources are untouched
    patches[0].zero_()
    assert imgs[0, :, 2:6, 1:4].any()


def test_classifier_trained_on_a_few_trigger_windows_finds_the_other_poisons(case):
    """Six windows cut from poisons at their manifest location teach it the trigger; it then ranks the
    held-out poisons (trigger anywhere) above held-out clean images, which it never saw."""
    truth, recs, keys = case.truth, case.manifest.records, np.asarray(case.dataset.keys)
    corpus = _Images(case.dataset)
    poisons, clean = np.flatnonzero(truth), np.flatnonzero(~truth)
    rng = np.random.default_rng(0)
    teach = poisons[:6]
    boxes = np.array([recs[int(keys[p])].location for p in teach])
    train_clean = np.sort(rng.choice(clean, 400, replace=False))
    clf = train_poison_classifier(corpus, train_clean, crop_windows(corpus.images(teach), boxes), rng=rng,
                                  epochs=3, seed=0)
    held = np.setdiff1d(np.arange(len(truth)), np.union1d(teach, train_clean))
    logits = classifier_logits(clf, corpus, held)
    m = detection_metrics(logits, logits > 0, truth[held])
    assert m["auroc"] > 0.95, m
    assert m["toptrue_precision"] > 0.8, m
    # and it learned this trigger, not "a pasted square": held-out clean images carrying a same-size
    # window of another clean image rank below the poisons
    ctrl = held[~truth[held]][:200]
    donors = corpus.images(rng.choice(clean, len(ctrl)))
    side, w = donors.shape[-1], int(boxes[0][2])
    at = rng.integers(0, side - w + 1, (len(ctrl), 2))
    pasted = paste_many(corpus.images(ctrl), crop_windows(donors, [[x, y, w, w] for x, y in at]),
                        rng.integers(0, side - w + 1, (len(ctrl), 2)))
    with torch.no_grad():
        ctrl_logits = clf(pasted).double().numpy()
    both = np.concatenate([logits[truth[held]], ctrl_logits])
    is_poison = np.r_[np.ones(truth[held].sum(), bool), np.zeros(len(ctrl), bool)]
    assert detection_metrics(both, both > 0, is_poison)["auroc"] > 0.95
