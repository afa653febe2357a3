import json

import numpy as np
import pytest

from sslguard.detectors.base import DetectionResult, register_detector


def _result():
    return DetectionResult(
        "demo", index=[5, 2, 9], scores=[0.1, 0.9, 0.5], flagged=[False, True, False], threshold=0.7,
        evidence={"cluster": np.array([1, 0, 1]), "box": np.array([[0, 0, 4, 4], [1, 2, 4, 4], [3, 3, 4, 4]])},
        info={"k": 2},
    )


def test_csv_rows_are_keyed_and_sorted_by_index(tmp_path):
    text = _result().to_csv_text().splitlines()
    assert text[0] == "index,score,flagged,cluster,box_0,box_1,box_2,box_3"
    assert [row.split(",")[0] for row in text[1:]] == ["2", "5", "9"]
    assert text[1] == "2,0.9,1,0,1,2,4,4"


def test_json_round_trip(tmp_path):
    r = _result()
    path = r.to_json(tmp_path / "r.json")
    back = DetectionResult.load_json(path)
    assert np.array_equal(back.index, r.index) and np.array_equal(back.flagged, r.flagged)
    assert np.array_equal(back.evidence["box"], r.evidence["box"])
    assert json.loads(path.read_text())["n_flagged"] == 1


def test_aligned_reorders_everything_and_names_missing_index():
    r = _result().aligned(np.array([9, 5, 2]))
    assert r.scores.tolist() == [0.5, 0.1, 0.9]
    assert r.evidence["cluster"].tolist() == [1, 1, 0]
    with pytest.raises(KeyError, match="no score for index 7"):
        _result().aligned(np.array([7]))


def test_invalid_results_are_rejected():
    with pytest.raises(ValueError, match="more than once"):
        DetectionResult("x", [1, 1], [0, 0], [0, 0], 0.0)
    with pytest.raises(ValueError, match="evidence"):
        DetectionResult("x", [1, 2], [0, 0], [0, 0], 0.0, evidence={"c": np.zeros(3)})


def test_registry_rejects_duplicates_and_unknown_stages():
    register_detector("_test_only", stage="ssl")(lambda: None)
    with pytest.raises(ValueError, match="twice"):
        register_detector("_test_only", stage="ssl")(lambda: None)
    with pytest.raises(ValueError, match="stage"):
        register_detector("_test_other", stage="training")(lambda: None)


def test_registry_records_stage_and_needs():
    from sslguard.detectors import STAGE_INPUTS, detector_spec, list_detectors

    assert set(list_detectors("ssl")) >= {"poisoncam", "patchsearch", "density"}
    assert set(list_detectors("classifier")) >= {"activation_clustering", "heatmap_clustering", "critical_layer",
                                                 "spectral"}
    assert "linf_pruning" not in list_detectors()  # a repair, not a detector
    for name in list_detectors():
        spec = detector_spec(name)
        if name.startswith("_test"):
            continue
        # every built-in detector can run on what its stage hands it
        assert not spec.missing(set(STAGE_INPUTS[spec.stage])), (name, spec.needs)
    assert detector_spec("critical_layer").needs == ("model", "dataset", "benign")
    with pytest.raises(ValueError, match="unknown detector"):
        detector_spec("nope")


def test_otsu_threshold_cuts_in_the_valley_of_a_bimodal_sample():
    from sslguard.detectors.base import otsu_threshold

    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(-5, 1, 5000), rng.normal(4, 1, 250), [np.nan, -np.inf]])
    t = otsu_threshold(v)
    assert -2.5 < t < 1.5
    assert otsu_threshold(np.full(7, 2.0)) == 2.0
    assert np.isnan(otsu_threshold(np.array([])))
