"""Every benchmark config (benchmarks/configs/) loads and validates under its schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.detect import BenchConfig
from benchmarks.repair import RepairConfig
from sslguard.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "benchmarks" / "configs"
SCHEMA = {"cifar10_detect": BenchConfig, "cifar10_detect_all": BenchConfig, "cifar10_detect_gpu_encoders": BenchConfig,
          "repair_cifar10": RepairConfig}


def test_every_benchmark_config_has_a_schema():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(SCHEMA)


@pytest.mark.parametrize("name", sorted(SCHEMA))
def test_benchmark_config_validates(name, tmp_path):
    try:
        cfg = load_config(SCHEMA[name], CONFIGS / f"{name}.yaml")
    except ConfigError as exc:  # a config whose data or encoders this machine lacks stops at that key
        pytest.skip(f"needs files this machine lacks: {exc}")
    assert isinstance(cfg, SCHEMA[name])
