"""scripts/train_ssl.py and the SSL config sections: thin script, resolved config and versions written."""

import importlib.util
from pathlib import Path

import pytest
import yaml

from sslguard.config import ConfigError, SSLConfig, TrainSSLConfig, from_dict, load_config

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("train_ssl_script", ROOT / "scripts" / "train_ssl.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TINY = ["data.subset_per_class=8", "data.image_size=16", "ssl.width=4", "ssl.epochs=1", "ssl.batch_size=16",
        "ssl.proj_dim=8", "ssl.hidden_dim=16", "ssl.knn_every=1", "ssl.knn_k=5", "progress=false"]


@pytest.mark.parametrize("name", ["quickstart_ssl", "cifar10_simclr", "cifar10_byol"])
def test_shipped_configs_load(name):
    cfg = load_config(TrainSSLConfig, ROOT / "sslguard" / "configs" / "train_ssl" / f"{name}.yaml")
    assert cfg.ssl.method in ("simclr", "byol") and cfg.ssl.epochs >= 1


@pytest.mark.parametrize("name", ["imagenet100_simclr_resnet18", "imagenet100_byol_resnet50"])
def test_imagenet_configs_stop_clearly_until_root_is_set(name, tmp_path):
    path = ROOT / "sslguard" / "configs" / "train_ssl" / f"{name}.yaml"
    with pytest.raises(ConfigError, match="data.root: path does not exist"):
        load_config(TrainSSLConfig, path)
    (tmp_path / "train").mkdir()
    cfg = load_config(TrainSSLConfig, path, [f"data.root={tmp_path}"])
    assert cfg.data.image_size == 224 and cfg.data.test_split == "val"
    assert _script().main(["--config", str(path)]) == 2


@pytest.mark.parametrize("override,key", [
    ("ssl.method=moco", "ssl.method"), ("ssl.backbone=vgg", "ssl.backbone"), ("ssl.batch_size=1", "ssl.batch_size"),
    ("ssl.mixed_precision=fp8", "ssl.mixed_precision"), ("ssl.epochs=0", "ssl.epochs"), ("ssl.lr=-1", "ssl.lr"),
    ("ssl.nope=1", "ssl.nope"), ("ssl.width=0", "ssl.width"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"^{key}"):
        load_config(TrainSSLConfig, None, [override])


def test_model_and_backbone_args():
    s = from_dict(SSLConfig, {"method": "byol", "width": 8, "momentum_base": 0.9})
    assert s.backbone_args() == {"width": 8}
    assert s.model_args() == {"proj_dim": None, "hidden_dim": None, "momentum_base": 0.9}


def test_script_trains_writes_config_versions_encoder(tmp_path, capsys):
    out = tmp_path / "run"
    rc = _script().main(["--config", str(ROOT / "sslguard" / "configs" / "train_ssl" / "quickstart_ssl.yaml"), *TINY, f"output_dir={out}",
                         "attack={name: htba, target: 3, rate: 0.5, params: {size_fraction: 0.25}}"])
    assert rc == 0
    assert "kNN top-1" in capsys.readouterr().out
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["ssl"]["epochs"] == 1 and resolved["attack"]["name"] == "htba"
    assert "torch" in (out / "versions.json").read_text()
    assert (out / "manifest.csv").exists() and (out / "encoder.safetensors").exists()
    from sslguard.models.ssl import read_backbone_meta

    meta = read_backbone_meta(out / "encoder.safetensors")
    assert meta["attack"] == "htba" and meta["backbone_kwargs"] == {"width": 4}
