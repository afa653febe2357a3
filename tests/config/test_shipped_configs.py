"""Every config shipped with the package loads and validates under its schema (one folder per schema),
and the installed command finds each by name from any directory."""

from __future__ import annotations

import pytest

from sslguard.config import ConfigError, DetectConfig, PoisonConfig, TrainSSLConfig, find_config, load_config
from sslguard.config import shipped_configs

SCHEMAS = {cls.CONFIG_FOLDER: cls for cls in (DetectConfig, TrainSSLConfig, PoisonConfig)}
SHIPPED = [(folder, name) for folder in SCHEMAS for name in shipped_configs(folder)]


def test_every_schema_ships_configs_and_no_stray_folder():
    from importlib.resources import files
    from pathlib import Path

    base = Path(str(files("sslguard") / "configs"))
    assert {p.name for p in base.iterdir() if p.is_dir()} == set(SCHEMAS)
    assert all(shipped_configs(folder) for folder in SCHEMAS)
    assert not list(base.glob("*.yaml")), "a config outside its schema's folder"


@pytest.mark.parametrize("folder,name", SHIPPED)
def test_shipped_config_validates(folder, name, tmp_path):
    cls = SCHEMAS[folder]
    try:
        cfg = load_config(cls, name)  # by name, as `sslguard <command> --config <name>` does
    except ConfigError as exc:
        # configs for data this machine may lack (ImageNet-100, CIFAR-10 folders) stop clearly at data.root
        assert str(exc).startswith(("data.root: path does not exist", "data.root: an imagefolder dataset needs")), exc
        for split in ("train", "val", "test"):
            (tmp_path / split).mkdir()
        cfg = load_config(cls, name, [f"data.root={tmp_path}"])
    assert isinstance(cfg, cls)


def test_a_path_wins_over_a_shipped_name_and_unknown_names_list_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart.yaml").write_text("name: local\n")
    assert load_config(DetectConfig, "quickstart.yaml").name == "local"
    assert load_config(DetectConfig, "quickstart").name == "quickstart"
    with pytest.raises(ConfigError, match="shipped detect configs: .*quickstart"):
        find_config("nope", "detect")
