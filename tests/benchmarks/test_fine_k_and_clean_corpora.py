"""The markdown of ``benchmarks/fine_k.py`` and ``benchmarks/clean_corpora.py`` from their rows (the runs
themselves take minutes to an hour and are not repeated here)."""

import json

from benchmarks import clean_corpora, fine_k


def _clean_row(case, n, fused, ps=0):
    return {"case": case, "n": n, "k": 20, "fused_flagged": fused, "seconds": 1.0, "command": "x",
            "detectors": {"poisoncam": {"flagged": 0, "evidence": "none"}, "patchsearch": {"flagged": ps, "evidence": "e"}}}


def test_clean_corpora_marks_a_corpus_cut_by_more_than_one_percent():
    md = clean_corpora.markdown([_clean_row("a", 1000, 10), _clean_row("b", 1000, 11, ps=11)], [])
    rows = [line for line in md.splitlines() if line.startswith("| a ") or line.startswith("| b ")]
    assert "| yes |" in rows[0] and "**no**" in rows[1]


def test_clean_corpora_rows_from_earlier_runs_fill_only_cases_not_run(tmp_path, monkeypatch):
    older = tmp_path / "old.json"
    older.write_text(json.dumps([_clean_row("digits", 10, 0), _clean_row("imagenette", 20, 0)]))
    newer = tmp_path / "new.json"
    newer.write_text(json.dumps([_clean_row("digits", 10, 1)]))
    out = tmp_path / "c.md"
    assert clean_corpora.main(["--cases", "--rows-from", str(newer), str(older), "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [(r["case"], r["fused_flagged"]) for r in rows] == [("digits", 1), ("imagenette", 0)]


def test_fine_k_markdown_has_both_detectors_and_the_sweep():
    pc = {"seed": 0, "k": 50, "detector": "poisoncam", "variant": "groups", "pieces": 4, "flagged": 72,
          "precision": 1.0, "recall": 0.99, "auroc": 1.0, "seconds": 20.0, "ms_per_image": 14.0, "confirmed": "4/4",
          "false_confirmed": 0, "min_trigger_rate": 0.97, "max_clean_rate": 0.11}
    ps = {"seed": 0, "k": 50, "detector": "patchsearch", "variant": "pairs", "pieces": 4, "flagged": 0,
          "precision": 0.0, "recall": 0.0, "auroc": 1.0, "seconds": 300.0, "ms_per_image": 200.0,
          "final_in_trigger": True, "pull": 0.49, "test_size": 733, "n_scored": 978}
    sw = {"seed": 0, "k": 30, "group_k": 10, "pieces": 3, "min_trigger_rate": 0.98, "max_clean_rate": 0.1,
          "clean_over_0_3": 0}
    md = fine_k.markdown([pc, ps], [], [sw])
    assert "| 0 | 50 | 4 | groups | 4/4 |" in md and "| 0 | 50 | 4 | pairs | True | 0.49 | 733 |" in md
    assert "## group_k sweep" in md and "| 0 | 30 | 3 | 10 | 0.98 |" in md
