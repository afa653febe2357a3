"""PoisonManifest: one row per index, CSV and JSON round-trip."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from sslguard.data import PoisonManifest, PoisonRecord


def _manifest() -> PoisonManifest:
    keys = np.array([5, 7, 9, 11])
    labels = np.array([0, 1, 2, 1])
    records = {7: PoisonRecord(7, 1, 3, (1, 2, 3, 4), {"note": "x", "boxes": [[0, 0, 3, 3]]}),
               11: PoisonRecord(11, 1, 3, None, {})}
    return PoisonManifest("badnets", 3, 42, keys, labels, records, {"rate": 0.5, "trigger_path": None})


def test_csv_has_a_row_per_index():
    m = _manifest()
    rows = list(csv.DictReader(io.StringIO(m.to_csv_text())))
    assert [r["index"] for r in rows] == ["5", "7", "9", "11"]
    assert [r["poisoned"] for r in rows] == ["0", "1", "0", "1"]
    assert rows[1]["x"] == "1" and rows[1]["h"] == "4" and rows[1]["label"] == "3"
    assert rows[3]["x"] == "" and rows[0]["attack"] == ""
    np.testing.assert_array_equal(m.is_poisoned(), [False, True, False, True])
    np.testing.assert_array_equal(m.is_poisoned([11, 5]), [True, False])


def test_round_trip(tmp_path):
    m = _manifest()
    csv_path, json_path = m.save(tmp_path, stem="gt")
    assert csv_path.name == "gt.csv" and json_path.name == "gt.json"
    j = PoisonManifest.load(json_path)
    assert j.to_dict() == m.to_dict()
    assert json.loads(json_path.read_text())["n_poisoned"] == 2
    c = PoisonManifest.load(csv_path)
    assert c.to_csv_text() == m.to_csv_text()
    assert c.records == m.records and c.attack == "badnets" and c.target == 3
    np.testing.assert_array_equal(c.keys, m.keys)
    np.testing.assert_array_equal(c.labels, m.labels)
    with pytest.raises(ValueError, match="json or .csv"):
        PoisonManifest.load(tmp_path / "gt.txt")
