"""A runaway detector is named, and it does not empty the corpus through the fused vote."""

import numpy as np

from sslguard.detectors.base import DetectionResult
from sslguard.pipeline import fuse
from sslguard.plausibility import implausible_flags


def _result(name, flagged):
    flagged = np.asarray(flagged, dtype=bool)
    return DetectionResult(name, np.arange(len(flagged)), flagged.astype(float), flagged, 0.5)


def test_share_and_class_rules():
    labels = np.repeat(np.arange(10), 100)
    one_class = labels == 3
    assert implausible_flags(one_class, labels) is None  # an all-to-one backdoor: one class, 10%
    half = np.zeros(1000, bool)
    half[::2] = True
    assert "50%" in implausible_flags(half, labels) and "more than 20%" in implausible_flags(half, labels)
    spread = np.zeros(1000, bool)
    spread[::50] = True  # 20 flags, 2% of the corpus, in every class
    assert "10 of 10 classes" in implausible_flags(spread, labels)
    assert implausible_flags(spread, labels, max_class_share=None) is None  # all-to-all: the rule off
    assert implausible_flags(spread, None) is None  # no labels: no class rule
    few = np.zeros(1000, bool)
    few[[0, 150, 350, 550, 750]] = True  # five stray flags in five classes are noise, not a runaway
    assert implausible_flags(few, labels) is None
    strays = one_class.copy()
    strays[[0, 1, 150, 151, 550, 551, 750, 751, 950, 951]] = True  # 100 in one class, 10 strays in five others
    assert implausible_flags(strays, labels) is None  # no class but the target holds 5% of the flags
    assert "6 of 10" in implausible_flags(strays, labels, min_class_fraction=0.0)
    assert implausible_flags(half, labels, max_share=None, max_class_share=None) is None
    assert implausible_flags(np.zeros(0, bool), None) is None


def test_an_implausible_detector_does_not_vote_but_still_ranks():
    good = _result("good", [1, 1, 0, 0, 0, 0])
    runaway = _result("runaway", [1, 1, 1, 1, 1, 0])
    both = fuse([good, runaway], flag="any")
    assert both.flagged.sum() == 5
    fused = fuse([good, runaway], flag="any", no_vote=["runaway"])
    assert fused.flagged.tolist() == good.flagged.tolist()
    assert fused.info["voters"] == ["good"] and fused.info["detectors"] == ["good", "runaway"]
    np.testing.assert_allclose(fused.scores, both.scores)  # the fused ranking keeps every detector
    alone = fuse([runaway], flag="any", no_vote=["runaway"])
    assert not alone.flagged.any()


def test_the_run_warns_first_and_keeps_the_corpus(tmp_path):
    """Spectral signatures with the paper's rule (every class) and eps=0.4 remove 60% of every class: the
    run names it in a warning before anything else, and the fused flags do not follow it."""
    from pathlib import Path

    import sslguard

    root = Path(__file__).resolve().parents[1]
    r = sslguard.detect(root / "sslguard" / "configs" / "detect" / "quickstart.yaml", quiet=True,
                        overrides=[f"output_dir={tmp_path}", "ssl.epochs=1", "classifier.epochs=2",
                                   "detectors.ssl=[density]", "detectors.classifier=[spectral]",
                                   "detectors.params.spectral.class_test=none",
                                   "detectors.params.spectral.expected_rate=0.4", "fusion.detectors=null"])
    assert r.detections["spectral"].flagged.mean() > 0.5
    warns = [n["text"] for n in r.summary["notices"] if n["level"] == "warn"]
    assert any("implausible flags from spectral" in t for t in warns), r.summary["notices"]
    assert not r.fused.flagged.any() and r.fused.info["voters"] == ["density"]
    html = r.report_path.read_text()
    assert html.index("implausible flags from spectral") < html.index("images flagged")


def test_uncorroborated_flags_names_a_detector_whose_flags_no_other_shares():
    from sslguard.plausibility import uncorroborated_flags

    n = 200
    poisons = np.zeros(n, bool)
    poisons[:20] = True
    clean_class = np.zeros(n, bool)
    clean_class[100:140] = True  # a clean class's cluster, picked by one detector only
    flags = {"activation_clustering": clean_class, "heatmap_clustering": poisons,
             "critical_layer": poisons.copy()}
    groups = {k: "classifier" for k in flags}
    out = uncorroborated_flags(flags, groups)
    assert list(out) == ["activation_clustering"] and "0% of its 40 flags" in out["activation_clustering"]
    flags["activation_clustering"] = poisons | clean_class & (np.arange(n) < 110)  # 20 of 30 shared: fine
    assert uncorroborated_flags(flags, groups) == {}
    assert uncorroborated_flags({"activation_clustering": clean_class}, {"activation_clustering": "classifier"}) == {}
    assert uncorroborated_flags(flags, None) == {}  # no stages: nothing to compare
    few = {"a": np.arange(n) >= 195, "b": poisons}  # a: 5 flags, under min_flagged, never named
    assert list(uncorroborated_flags(few, {"a": "s", "b": "s"})) == ["b"]
