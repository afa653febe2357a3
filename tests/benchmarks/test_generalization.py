"""The markdown and the acceptance counts of ``benchmarks/generalization.py`` from rows (the runs themselves
train CPU encoders for minutes each and are not repeated here)."""

import json
from pathlib import Path

from benchmarks import generalization as gen


def _m(f1, share=0.05, flagged=500):
    return {"n_flagged": flagged, "flagged_share": share, "precision": f1, "recall": f1, "f1": f1, "auroc": 1.0,
            "auprc": 1.0, "tpr_at_1pct_fpr": 1.0, **{f"top{k}_precision": 1.0 for k in (5, 10, 20, 50, 100, 500, "true")}}


def _row(case, half, verdict, pc, fused, ps=1.0):
    return {"case": case, "half": half, "what": case, "n": 10000, "poisons": 500, "k": 100,
            "learned": {"verdict": verdict, "triggered": 0.9, "random_patch": 0.1, "clean": 0.05,
                        "triggered_corpus_bank": 0.95, "random_patch_corpus_bank": 0.2, "clean_corpus_bank": 0.05},
            "purity": {"poisons": 480, "size": 500, "of": 500}, "seconds": 60.0, "command": "x",
            "evidence": {"poisoncam": "a confirmed trigger cluster"}, "warnings": [],
            "metrics": {"poisoncam": _m(pc), "patchsearch": _m(ps), "density": _m(0.0, 0.0, 0), "fused": fused}}


def test_acceptance_counts_learned_cases_by_half_and_the_clean_bar():
    rows = [_row("a", "tuning", "learned", 0.99, _m(0.99)),
            _row("b", "held-out", "learned (tied to the poisons)", 0.5, _m(0.95)),
            _row("c", "held-out", "not learned", 0.0, _m(0.0, share=0.02, flagged=200))]
    text = "\n".join(gen.acceptance(rows))
    assert "learned cases, tuning: fused F1 >= 0.9 on 1 of 1; PoisonCAM F1 >= 0.9 on 1 of 1" in text
    assert "learned cases, held-out: fused F1 >= 0.9 on 1 of 1; PoisonCAM F1 >= 0.9 on 0 of 1" in text
    assert "not learned, c: fused flags 2.00% of the corpus (**over** the 1% bar)" in text
    assert "under a bar: b" in text


def test_markdown_has_every_detector_row_in_both_halves(tmp_path):
    rows = [_row("a", "tuning", "learned", 0.99, _m(0.99)), _row("b", "held-out", "not learned", 0.0, _m(0.0, 0.0, 0))]
    md = gen.markdown(rows, ["--cases", "a", "b"])
    assert "## Detection, tuning half" in md and "## Detection, held-out half" in md
    for name in ("PoisonCAM", "PatchSearch", "density", "fused"):
        assert f"| a | {name} |" in md and f"| b | {name} |" in md
    assert "corpus bank 0.95 / 0.20 / 0.05" in md


def test_rows_from_earlier_runs_fill_cases_not_run(tmp_path):
    older = tmp_path / "old.json"
    older.write_text(json.dumps([_row("grid12_50_t0", "tuning", "learned", 0.99, _m(0.99))]))
    out = tmp_path / "g.md"
    assert gen.main(["--cases", "--rows-from", str(older), "--out", str(out)]) == 0
    assert [r["case"] for r in json.loads(out.with_suffix(".json").read_text())] == ["grid12_50_t0"]


def test_every_case_config_loads_and_names_an_existing_trigger():
    from sslguard.pipeline import load_detect_config

    for name, (_, _, config, args) in gen.CASES.items():
        roots = [a.split("=", 1)[1] for a in args if a.startswith("data.root=")]
        if not config or not all(Path(r).exists() for r in roots):
            continue  # the planted case, or ../shared's data absent (a user's machine): the config checks the path
        cfg = load_detect_config(config, [*args, "output_dir=/tmp/unused", "name=x"])
        if cfg.attack is not None:
            cfg.attack.build()  # fails on a missing trigger file, naming it
        assert name == "quickstart" or cfg.cluster.k == "auto"


def test_an_older_row_gets_the_fused_ranking_of_the_one_detector_that_flagged():
    """A row measured before the fused ranking left out detectors with no flags: where only PoisonCAM flagged,
    the fused ranking metrics become PoisonCAM's own (its percentile ranks keep its order); flags stay."""
    fused = {**_m(1.0), "auroc": 0.63, "auprc": 0.09}
    row = _row("blend30s7_50_t7", "held-out", "learned", 1.0, fused)
    row["metrics"]["patchsearch"] = {**_m(0.0, 0.0, 0), "auroc": 0.22}
    now = gen.fused_ranking_now(json.loads(json.dumps(row)))
    assert now["fused_ranked"] == ["poisoncam"] and now["fused_ranking_from"] == "poisoncam"
    assert now["metrics"]["fused"]["auroc"] == 1.0 and now["metrics"]["fused"]["f1"] == 1.0
    both = gen.fused_ranking_now(_row("a", "tuning", "learned", 1.0, {**_m(1.0), "auroc": 0.9}))
    assert both["fused_ranked"] == ["poisoncam", "patchsearch"] and both["metrics"]["fused"]["auroc"] == 0.9
    measured = {**row, "fused_ranked": ["poisoncam", "patchsearch"]}  # a row the rule already ran on
    assert gen.fused_ranking_now(measured)["metrics"]["fused"]["auroc"] == 0.63
    assert "Fused ranking: PoisonCAM's own" in gen.markdown([now], [])
