"""scripts/detect.py: --help lists every configuration key; bad configurations fail in one line, exit 2."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from sslguard.config import DetectConfig

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "detect.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("detect_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    """Dotted keys of the config dataclasses, walked independently of the script's own helper."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        if len(args) == 1 and dataclasses.is_dataclass(args[0]):
            keys += _leaf_keys(args[0], f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def test_help_lists_every_key_with_its_default(capsys):
    with pytest.raises(SystemExit) as exc:
        _load_script().main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    listed = {line.split("=", 1)[0].strip(): line.split("=", 1)[1].split("#")[0].strip()
              for line in out.splitlines() if line.startswith("  ") and "=" in line}
    for key in _leaf_keys(DetectConfig):
        assert key in listed, key
    defaults = DetectConfig()
    assert listed["ssl.epochs"] == str(defaults.ssl.epochs)
    assert listed["fusion.flag"] == defaults.fusion.flag


@pytest.mark.parametrize("override, key", [
    ("bogus=1", "bogus"),
    ("ssl.nonsense=3", "ssl.nonsense"),
    ("ssl.epochs=many", "ssl.epochs"),
    ("fusion.flag=sometimes", "fusion.flag"),
    ("detectors.ssl=[nosuchdetector]", "detectors.ssl[0]"),
    ("attack.name=nosuchattack", "attack.name"),
    ("data.image_size=-3", "data.image_size"),
])
def test_bad_config_is_one_line_naming_the_key(capsys, override, key):
    assert _load_script().main([override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"config error: {key}:"), err


def test_bad_config_exits_2_without_traceback_in_a_real_process():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--config", str(ROOT / "sslguard" / "configs" / "detect" / "quickstart.yaml"),
                           "cluster.k=zero"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "cluster.k" in proc.stderr


def test_missing_config_file_is_a_config_error(capsys, tmp_path):
    assert _load_script().main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
