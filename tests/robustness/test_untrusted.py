"""Untrusted files: checkpoints, encoders, caches, configs and manifests may come from elsewhere.

Loading one must never run code (no pickle: safetensors, ``torch.load(weights_only=True)``,
``np.load`` without pickles, ``yaml.safe_load``), and a manifest must not reach outside its root.
A static scan keeps unsafe calls from creeping into the sources.
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from sslguard.config import ConfigError, PoisonConfig, load_config

ROOT = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this creates ``marker``: proof that a loader executed attacker-chosen code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ------------------------------------------------------------------------------ static source scan

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "marshal", "shelve", "cloudpickle"}
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all", "Loader",
               "UnsafeLoader", "FullLoader"}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _kw_is(call: ast.Call, name: str, value) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Every place in ``source`` that could deserialise code or run a string; empty when clean."""
    tree = ast.parse(source, filename)
    found = []
    torch_load_names = {"torch.load"}
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in UNSAFE_MODULES:
                    found.append(f"{where}: import {a.name}")
        elif isinstance(node, ast.ImportFrom):
            mod = (node.module or "").split(".")[0]
            if mod in UNSAFE_MODULES:
                found.append(f"{where}: from {node.module} import ...")
            if mod == "yaml" and any(a.name in UNSAFE_YAML for a in node.names):
                found.append(f"{where}: from yaml import {[a.name for a in node.names]}")
            if node.module == "torch" and any(a.name == "load" for a in node.names):
                torch_load_names.update(a.asname or a.name for a in node.names if a.name == "load")
            if node.module == "pandas" and any(a.name == "read_pickle" for a in node.names):
                found.append(f"{where}: pandas.read_pickle")
        elif isinstance(node, ast.Attribute):
            name = _dotted(node)
            if name.startswith("yaml.") and name.split(".", 1)[1] in UNSAFE_YAML:
                found.append(f"{where}: {name}")
            if name.endswith("read_pickle") or name in ("torch.jit.load", "torch.hub.load", "torch.package.PackageImporter"):
                found.append(f"{where}: {name}")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in torch_load_names and not _kw_is(node, "weights_only", True):
                found.append(f"{where}: {name}(...) without weights_only=True")
            if name in ("np.load", "numpy.load") and any(k.arg == "allow_pickle" and not _kw_is(node, "allow_pickle", False)
                                                          for k in node.keywords):
                found.append(f"{where}: {name}(allow_pickle=...)")
            if isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec", "compile", "__import__"):
                found.append(f"{where}: {node.func.id}(...)")
            if name.startswith(("subprocess.", "os.system", "os.popen")):
                if name in ("os.system", "os.popen") or _kw_is(node, "shell", True):
                    found.append(f"{where}: {name} with a shell")
    return found


def test_scanner_catches_each_unsafe_pattern():
    bad = {
        "import pickle": 1, "import joblib as jl": 1, "from dill import loads": 1,
        "import torch\ntorch.load('x')": 1, "import torch\ntorch.load('x', weights_only=False)": 1,
        "from torch import load\nload('x')": 1, "from torch import load as L\nL('x')": 1,
        "import yaml\nyaml.load(s, Loader=yaml.Loader)": 2, "import yaml\nyaml.unsafe_load(s)": 1,
        "import yaml\nyaml.full_load(s)": 1, "from yaml import FullLoader": 1,
        "import numpy as np\nnp.load('x', allow_pickle=True)": 1, "eval('1')": 1, "exec('x=1')": 1,
        "import subprocess\nsubprocess.run('ls', shell=True)": 1, "import os\nos.system('ls')": 1,
        "import torch\ntorch.jit.load('m.pt')": 1, "import pandas as pd\npd.read_pickle('f')": 1,
    }
    for src, n in bad.items():
        assert len(unsafe_calls(src)) == n, (src, unsafe_calls(src))
    fine = ("import torch\ntorch.load('x', map_location='cpu', weights_only=True)\n"
            "import yaml\nyaml.safe_load(s)\nyaml.safe_dump(d)\nimport numpy as np\nnp.load('x')\n"
            "np.load('x', allow_pickle=False)\nmodel.eval()\nimport subprocess\nsubprocess.run(['ls'])\n")
    assert unsafe_calls(fine) == []


def test_sources_have_no_unsafe_deserialisation():
    files = sorted((ROOT / "sslguard").rglob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))
    assert len(files) > 20
    problems = [p for f in files for p in unsafe_calls(f.read_text(), str(f.relative_to(ROOT)))]
    assert problems == [], "unsafe deserialisation or code execution:\n" + "\n".join(problems)


# --------------------------------------------------------------------------- pickle payloads


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch notes the payload's protocol
def test_pickle_payload_as_ssl_checkpoint_is_refused(tmp_path):
    from sslguard.train.ssl import CHECKPOINT_FORMAT, CHECKPOINT_NAME, load_checkpoint

    marker = tmp_path / "pwned"
    ckpt = tmp_path / CHECKPOINT_NAME
    torch.save({"format": CHECKPOINT_FORMAT, "epoch": 1, "model": _Payload(marker)}, ckpt)  # zip + pickle
    with pytest.raises(ValueError, match=f"{ckpt}: not a readable checkpoint"):
        load_checkpoint(ckpt)
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps({"format": CHECKPOINT_FORMAT, "x": _Payload(marker)}))  # raw pickle
    with pytest.raises(ValueError, match="legacy.pt: not a readable checkpoint"):
        load_checkpoint(legacy)
    assert not marker.exists()


def test_train_ssl_refuses_a_planted_checkpoint_without_running_it(tmp_path):
    from sslguard.data import load_digits_dataset
    from sslguard.models.ssl import build_ssl_model, make_backbone
    from sslguard.train.ssl import CHECKPOINT_FORMAT, train_ssl

    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"format": CHECKPOINT_FORMAT, "model": _Payload(marker)}, out / "checkpoint.pt")
    ds = load_digits_dataset("train", size=16).subset(range(32))
    model = build_ssl_model("simclr", make_backbone("convnet4", width=4), proj_dim=8, hidden_dim=16)
    with pytest.raises(ValueError, match="checkpoint.pt: not a readable checkpoint"):
        train_ssl(model, ds, epochs=1, batch_size=16, image_size=16, output_dir=out, progress=False)
    assert not marker.exists()


def test_truncated_checkpoint_is_reported_not_trusted(tmp_path):
    from sslguard.data import load_digits_dataset
    from sslguard.models.ssl import build_ssl_model, make_backbone
    from sslguard.train.ssl import train_ssl

    ds = load_digits_dataset("train", size=16).subset(range(32))

    def model():
        torch.manual_seed(0)
        return build_ssl_model("simclr", make_backbone("convnet4", width=4), proj_dim=8, hidden_dim=16)

    out = tmp_path / "run"
    train_ssl(model(), ds, epochs=1, batch_size=16, image_size=16, output_dir=out, progress=False)
    ck = out / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    with pytest.raises(ValueError, match="checkpoint.pt: not a readable checkpoint"):
        train_ssl(model(), ds, epochs=2, batch_size=16, image_size=16, output_dir=out, progress=False)


def test_pickle_payload_as_encoder_is_refused_by_the_pipeline_loader(tmp_path):
    from sslguard.models.ssl import load_backbone, read_backbone_meta

    marker = tmp_path / "pwned"
    enc = tmp_path / "encoder.safetensors"
    torch.save({"state": _Payload(marker)}, enc)
    for fn in (load_backbone, read_backbone_meta):
        with pytest.raises(ValueError, match="encoder.safetensors: not a readable safetensors"):
            fn(enc)
    assert not marker.exists()


def test_object_arrays_in_caches_are_not_unpickled(tmp_path):
    from sslguard.cluster import ClusterResult
    from sslguard.data import load_digits_dataset
    from sslguard.embed import embed_dataset
    from sslguard.models import create_backbone

    marker = tmp_path / "pwned"
    evil = np.array([_Payload(marker)], dtype=object)
    cache = tmp_path / "emb.npz"
    np.savez(cache, index=evil, features=evil)  # np.savez pickles object arrays
    ds = load_digits_dataset("test", size=16).subset(range(10))
    torch.manual_seed(0)
    keys, feats = embed_dataset(create_backbone("convnet4", width=4), ds, image_size=16, cache_path=cache, progress=False)
    assert not marker.exists()
    assert np.array_equal(keys, ds.keys) and feats.shape[0] == 10  # recomputed, and the cache rewritten
    with np.load(cache) as z:
        assert z["features"].dtype == np.float32
    clusters = tmp_path / "clusters.npz"
    np.savez(clusters, assignments=evil, centroids=evil, distances=evil, k=1, inertia=0.0, spherical=True, seed=0)
    with pytest.raises(ValueError, match="pickle"):
        ClusterResult.load(clusters)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------- YAML


def test_yaml_python_tags_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    for text in (f"attack:\n  params: !!python/object/apply:os.system ['touch {marker}']\n",
                 f"preview: !!python/object/new:pathlib.Path ['{marker}']\n",
                 "output_dir: !!python/name:os.system\n"):
        p = tmp_path / "c.yaml"
        p.write_text(text)
        with pytest.raises(ConfigError, match="c.yaml: not valid YAML") as info:
            load_config(PoisonConfig, p)
        assert "\n" not in str(info.value).split(" (")[0]
    # the same tag in a dotted override is refused as a ConfigError naming the key
    with pytest.raises(ConfigError, match=r"^attack\.params\.x:"):
        load_config(PoisonConfig, None, [f"attack.params.x=!!python/object/apply:os.system ['touch {marker}']"])
    assert not marker.exists()


# ---------------------------------------------------------------------------------------- manifests


def test_manifest_paths_stay_inside_their_root(tmp_path):
    from sslguard.sanitize import ManifestPathError, read_file_list

    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(b"")
    (tmp_path / "secret").mkdir()
    (root / "a" / "sneaky").symlink_to(tmp_path / "secret", target_is_directory=True)
    cases = {"../secret/key": "..", "a/../../secret/key": "dotdot inside", "/etc/passwd": "absolute",
             "a/sneaky/key": "symlinked folder leading out", "a/./../../data/../secret": "mixed"}
    for line in cases:
        m = tmp_path / "m.txt"
        m.write_text(f"a/x.png\n# a comment\n\n{line}\n")
        with pytest.raises(ManifestPathError, match=r"m\.txt:4: .*points outside"):
            read_file_list(m, root=root)
        assert read_file_list(m, root=root, allow_outside=True)[-1].name in ("key", "passwd", "secret")
    ok = tmp_path / "ok.txt"
    ok.write_text("a/x.png\na/../a/x.png\n")
    assert read_file_list(ok, root=root) == [(root / "a" / "x.png").resolve()] * 2
    (tmp_path / "noroot.txt").write_text("a/x.png\n")
    with pytest.raises(ValueError, match="no root given"):
        read_file_list(tmp_path / "noroot.txt")
