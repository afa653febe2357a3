"""The README's quickstart, unchanged: both SSL detectors find the HTBA poisons the encoder learned.

This is the first thing a new user runs (about a minute on one core). The acceptance of the
generalisation issue: PoisonCAM and PatchSearch each recall >= 0.9 of the HTBA poisons with AUROC >= 0.98
(HTBA poisons against clean images; the BadNets poisons are the classifier stage's), and of the images
each flags that are not BadNets poisons at least 90% are HTBA poisons.
"""

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import sslguard

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return sslguard.detect(ROOT / "configs" / "quickstart.yaml", overrides=[f"output_dir={out}"], quiet=True)


@pytest.mark.parametrize("name", ["poisoncam", "patchsearch"])
def test_ssl_detectors_find_the_quickstart_htba_poisons(quickstart, name):
    from sslguard.pipeline import load_data, load_detect_config

    data = load_data(load_detect_config(ROOT / "configs" / "quickstart.yaml"))
    htba, badnets = (m.is_poisoned(data.keys) for m in data.manifests)
    r = quickstart.detections[name]
    assert np.array_equal(np.asarray(r.index), np.asarray(data.keys))
    recall = (r.flagged & htba).sum() / htba.sum()
    keep = ~badnets
    auroc = roc_auc_score(htba[keep], r.scores[keep])
    others = r.flagged & ~badnets
    precision = (others & htba).sum() / max(1, others.sum())
    assert recall >= 0.9 and auroc >= 0.98 and precision >= 0.9, (recall, auroc, precision, r.info.get("evidence"))
