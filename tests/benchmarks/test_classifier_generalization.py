"""The classifier matrix benchmark's helpers (no training): trusted-set shifts, fusion from saved flags,
runaway counting and the table from saved rows."""

import json

import numpy as np

from benchmarks.classifier_generalization import CASES, colour, jpeg, main, summary, with_fusion
from sslguard.data.datasets import ArrayDataset


def _ds():
    rng = np.random.default_rng(0)
    return ArrayDataset(rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8), [0, 1, 0, 1], ["a", "b"],
                        keys=np.arange(10, 14))


def test_shifts_keep_identity_and_move_pixels():
    ds = _ds()
    for out in (jpeg(ds), colour(ds)):
        assert np.array_equal(out.keys, ds.keys) and np.array_equal(out.labels, ds.labels)
        assert out.images.shape == ds.images.shape and not np.array_equal(out.images, ds.images)
    warm = colour(ds).images.astype(int) - ds.images.astype(int)
    assert warm[..., 0].mean() > 0 > warm[..., 2].mean()  # redder, less blue


def _row(flags: dict, asr: float = 1.0) -> dict:
    n = 100
    labels = np.repeat(np.arange(10), 10)
    return {"case": CASES[0].name, "data": "digits", "model": "convnet4", "attack": "badnets", "trigger": "grid",
            "rate": 0.05, "n": n, "poisons": 5, "share": 0.05, "clean_acc": 0.9, "asr": asr,
            "labels": labels.tolist(), "truth": [0, 1, 2, 3, 4],
            "trust": {"iid": {"detectors": {d: {"flagged": len(p), "precision": 1.0, "recall": 1.0, "auroc": 1.0,
                                                "runaway": len(p) > 2 * 5 + 1} for d, p in flags.items()},
                              "flags": flags}}}


def test_fusion_from_saved_flags_and_the_runaway_count():
    poisons = [0, 1, 2, 3, 4]
    stray_class = list(range(50, 62))  # classes 5 and 6, flagged by one detector only
    row = with_fusion(_row({"activation_clustering": poisons + stray_class, "heatmap_clustering": poisons[:3],
                            "spectral": poisons[:2], "critical_layer": []}))
    fused = row["trust"]["iid"]["fused"]
    assert fused["any"]["flagged"] == 17 and fused["any"]["precision"] < 0.8
    # agree: two votes on 0-2, the class vote keeps AC's whole cluster in class 0, AC's lone classes drop
    assert fused["agree"]["flagged"] == 5 and fused["agree"]["recall"] == 1.0
    assert fused["two"]["flagged"] == 3 and fused["every"]["flagged"] == 2
    assert "activation_clustering" in row["trust"]["iid"]["warnings"]  # 5 of 17 flags shared
    text, tally = summary([row])
    assert tally["runaway"]["warned"] == 1 and not tally["runaway"]["silent"]
    assert tally["tally"]["agree iid"] == [1, 1] and tally["tally"]["any iid"] == [1, 0]


def test_the_table_from_saved_rows(tmp_path):
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps({"rows": [_row({"activation_clustering": [0, 1, 2, 3, 4],
                                                 "heatmap_clustering": [0, 1, 2, 3, 4]})]}))
    md = tmp_path / "out.md"
    assert main(["--rows-from", str(rows), "--md", str(md)]) == 0
    text = md.read_text()
    assert "| agree | iid | 1 | 1 | 100% |" in text and CASES[0].name in text
    kept = json.loads(md.with_suffix(".json").read_text())["rows"][0]
    assert "labels" not in kept and "flags" not in kept["trust"]["iid"]  # per-image data stays in the run's file
    assert main(["--cases", "no_such_case"]) == 2


def test_missing_data_is_one_line_and_exit_code_1(monkeypatch, tmp_path, capsys):
    import benchmarks.classifier_generalization as cg

    monkeypatch.setattr(cg, "SHARED", tmp_path)
    assert main(["--cases", "mnist_badnets_glyph_1"]) == 1
    assert "mnist_badnets_glyph_1: data not found" in capsys.readouterr().err
