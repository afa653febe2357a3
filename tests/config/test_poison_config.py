"""PoisonConfig: the YAML of scripts/poison.py; every error names the dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest

from sslguard.config import ConfigError, PoisonConfig, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "sslguard" / "configs" / "poison"


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,key", [
    ("attack:\n  name: htba\n  colour: red\n", "attack.colour"),
    ("bogus: 1\n", "bogus"),
    ("data:\n  nmae: digits\n", "data.nmae"),
    ("attack:\n  rate: lots\n", "attack.rate"),
    ("attack:\n  target: 1.5\n", "attack.target"),
    ("attack:\n  params: [1, 2]\n", "attack.params"),
    ("preview_n: true\n", "preview_n"),
    ("attack:\n  rate: 1.5\n", "attack.rate"),
    ("attack:\n  rate: -0.1\n", "attack.rate"),
    ("attack:\n  rate_of: class\n", "attack.rate_of"),
    ("attack:\n  name: fancy\n", "attack.name"),
    ("attack:\n  name: sig\n  params:\n    size_fraction: 0.2\n", "attack.params.size_fraction"),
    ("data:\n  name: mnist\n", "data.name"),
])
def test_errors_name_the_dotted_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as info:
        load_config(PoisonConfig, _write(tmp_path, text))
    assert str(info.value).startswith(f"{key}:")


def test_overrides_and_defaults(tmp_path):
    cfg = load_config(PoisonConfig, _write(tmp_path, "attack:\n  name: ctrl\n"),
                      ["attack.rate=0.2", "attack.params.magnitude=30", "preview=p.png"])
    assert cfg.attack.name == "ctrl" and cfg.attack.rate == 0.2 and cfg.attack.params == {"magnitude": 30}
    assert cfg.preview == "p.png" and cfg.data.name == "digits"
    with pytest.raises(ConfigError, match=r"^attack\.rate:"):
        load_config(PoisonConfig, None, ["attack.rate=3"])


@pytest.mark.parametrize("name", ["poison_digits_htba.yaml", "poison_cifar10_badnets.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(PoisonConfig, CONFIGS / name)
    assert cfg.attack.name in ("htba", "badnets")
