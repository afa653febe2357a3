"""The repair benchmark's plumbing on a tiny CIFAR-10 subset (its numbers are not checked here)."""

import json

import pytest

from benchmarks.repair import (STUDY_ATTACKS, STUDY_REGULARIZERS, RepairConfig, StudyRow, run_repair_benchmark,
                               study_markdown)
from sslguard.config import ConfigError, from_dict


def test_study_markdown_puts_each_cell_in_its_place():
    rows = [StudyRow("badnets", "none", 0.5, 0.99, 10.0, 50), StudyRow("badnets", "mixup", 0.25, 0.125, 11.0, 50),
            StudyRow("sig", "none", 0.75, 0.5, 12.0, 50)]
    md = study_markdown(rows)
    assert "| badnets | 0.500 / 0.990 | 0.250 / 0.125 |" in md
    assert "| sig | 0.750 / 0.500 |  |" in md
    assert "| sig | none | 0.7500 | 0.5000 | 50 | 12 |" in md


def test_repair_config_names_bad_keys():
    assert set(RepairConfig().attacks) == set(STUDY_ATTACKS)
    assert set(RepairConfig().regularizers) == set(STUDY_REGULARIZERS)
    with pytest.raises(ConfigError, match=r"attacks\[1\]"):
        from_dict(RepairConfig, {"attacks": ["badnets", "wanet"]})
    with pytest.raises(ConfigError, match="finetune_fraction"):
        from_dict(RepairConfig, {"finetune_fraction": 0.0})
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(RepairConfig, {"finetune_epoch": 3})


def test_run_repair_benchmark_writes_its_tables(cifar10_root, tmp_path):
    cfg = RepairConfig(root=str(cifar10_root), n_per_class=12, n_test_per_class=4, width=4, epochs=1, batch_size=32,
                       attacks=["badnets"], regularizers=["none", "logit_squeezing"], finetune_fraction=0.2,
                       finetune_epochs=2, finetune_lrs=[0.01], prune_fractions=[0.0, 0.5])
    paths = run_repair_benchmark(cfg, tmp_path, command="pytest")
    md = paths["markdown"].read_text()
    assert "Command: `pytest`" in md
    assert "| badnets | " in md and "logit_squeezing: clean acc / ASR" in md
    assert "| finetune lr=0.01 | epochs of fine-tuning | 2 |" in md
    res = json.loads(paths["json"].read_text())
    assert [r["regularizer"] for r in res["study"]] == ["none", "logit_squeezing"]
    assert len(res["repair"]["finetune"][0]["asr"]) == 3
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
