"""scripts/poison.py end to end on the embedded digits (in-process, so it is quick)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
from PIL import Image

from sslguard.data import PoisonManifest, load_digits_dataset, poison_dataset
from sslguard.data.attacks import build_attack

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("poison_script", ROOT / "scripts" / "poison.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_poison_script_writes_manifest_and_preview(tmp_path):
    out, preview = tmp_path / "run", tmp_path / "grid.png"
    rc = _script().main(["--config", str(ROOT / "sslguard" / "configs" / "poison" / "poison_digits_htba.yaml"), f"output_dir={out}",
                         "--preview", str(preview), "attack.rate=0.4", "attack.seed=5"])
    assert rc == 0
    man = PoisonManifest.load(out / "manifest.json")
    assert man.attack == "htba" and man.target == 3 and man.seed == 5
    # the library, called directly with the same settings, gives the same manifest text
    _, lib = poison_dataset(load_digits_dataset("train"), build_attack("htba", target=3, rate=0.4, seed=5,
                                                                                size_fraction=0.25))
    assert (out / "manifest.csv").read_text() == lib.to_csv_text()
    with Image.open(preview) as im:
        assert im.format == "PNG" and im.width > 200
    assert "attack" in (out / "config.yaml").read_text()
    assert "numpy" in json.loads((out / "versions.json").read_text())
    assert np.isin(man.poisoned_indices, man.keys).all()


def test_poison_script_reports_config_errors(tmp_path, capsys):
    rc = _script().main(["--config", str(ROOT / "sslguard" / "configs" / "poison" / "poison_digits_htba.yaml"), f"output_dir={tmp_path}",
                         "attack.rate_of=everything"])
    assert rc == 2
    assert "attack.rate_of" in capsys.readouterr().err
    assert not (tmp_path / "manifest.csv").exists()
