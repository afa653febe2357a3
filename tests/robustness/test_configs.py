"""Bad configurations: unknown keys, wrong types, out-of-range values, missing paths. Each is one
ConfigError whose message starts with the dotted key (or the file); the scripts turn it into exit
code 2 and that one line on stderr, without a traceback. (PoisonConfig's basic cases are in
tests/data/test_config.py.)"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from sslguard.config import ConfigError, DetectConfig, TrainSSLConfig, load_config
from tests.robustness.killing import ROOT, env

DETECT_CASES = [
    ("bogus: 1\n", "bogus"),
    ("ssl:\n  widht: 4\n", "ssl.widht"),
    ("ssl:\n  epochs: ten\n", "ssl.epochs"),
    ("ssl:\n  lr: [0.1]\n", "ssl.lr"),
    ("ssl:\n  batch_size: -8\n", "ssl.batch_size"),
    ("ssl:\n  width: -4\n", "ssl.width"),
    ("ssl:\n  warmup_epochs: 500\n", "ssl.warmup_epochs"),
    ("data:\n  image_size: -1\n", "data.image_size"),
    ("data:\n  subset_per_class: -5\n", "data.subset_per_class"),
    ("data:\n  on_error: ignore\n", "data.on_error"),
    ("data:\n  name: imagefolder\n", "data.root"),
    ("data:\n  name: imagefolder\n  root: /nonexistent/photos\n", "data.root"),
    ("encoder: /nonexistent/encoder.safetensors\n", "encoder"),
    ("attack:\n  rate: 1.5\n", "attack.rate"),
    ("attack:\n  rate: .nan\n", "attack.rate"),
    ("attack:\n  target: -1\n", "attack.target"),
    ("attack:\n  params:\n    size_fraction: 0.2\n    colour: red\n", "attack.params.colour"),
    ("cluster:\n  k: 0\n", "cluster.k"),
    ("cluster:\n  k: 2.5\n", "cluster.k"),
    ("embed:\n  batch_size: 0\n", "embed.batch_size"),
    ("detectors:\n  ssl: [poisoncam, nope]\n", "detectors.ssl[1]"),
    ("detectors:\n  params:\n    poisoncam:\n      bogus: 1\n", "detectors.params.poisoncam.bogus"),
    ("detectors:\n  ssl: []\n  classifier: []\n", "detectors"),
    ("fusion:\n  fused_quantile: 1.0\n", "fusion.fused_quantile"),
    ("fusion:\n  detectors: [spectral, nope]\n", "fusion.detectors[1]"),
    ("report:\n  max_rows: -1\n", "report.max_rows"),
    ("classifier:\n  lr: 0\n", "classifier.lr"),
    ("name: ../escape\n", "name"),
    ("seed: null\n", "seed"),
]


@pytest.mark.parametrize("text,key", DETECT_CASES)
def test_detect_config_errors_name_the_key(tmp_path, text, key):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(DetectConfig, p)
    msg = str(info.value)
    assert msg.startswith(f"{key}: ") and "\n" not in msg, msg


@pytest.mark.parametrize("text,key", [
    ("ssl:\n  knn_every: 1\ndata:\n  test_split: null\n", "ssl.knn_every"),
    ("ssl:\n  checkpoint_every: -1\n", "ssl.checkpoint_every"),
    ("resume: maybe\n", "resume"),
    ("attack:\n  name: htba\n  rate: 2\n", "attack.rate"),
    ("output_dir: ''\n", "output_dir"),
])
def test_train_ssl_config_errors_name_the_key(tmp_path, text, key):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', '[.]')}: "):
        load_config(TrainSSLConfig, p)


def test_files_that_are_not_configs(tmp_path):
    for text, what in [("- a\n- b\n", "must be a mapping"), ("a: [1, 2\n", "not valid YAML"),
                       ("a: 1\n\ta: 2\n", "not valid YAML"),
                       ("\x89PNG\r\n\x1a\n\xff\x00", "not a text file")]:
        p = tmp_path / "c.yaml"
        p.write_bytes(text.encode("latin-1"))
        with pytest.raises(ConfigError) as info:
            load_config(DetectConfig, p)
        assert str(info.value).startswith(f"{p}: ") and what in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: cannot read"):
        load_config(DetectConfig, tmp_path)  # a folder
    with pytest.raises(ConfigError, match=r"^--config: file not found"):
        load_config(DetectConfig, tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# only a comment\n")
    assert load_config(DetectConfig, empty) == DetectConfig()  # an empty file is the defaults


def test_k_above_n_and_rates_beyond_the_pool():
    """Values that only become wrong once the data are known: k-means refuses k > n by name (the
    pipeline caps cluster.k at n, as documented), and an attack rate that asks for more poisons than
    there are eligible images names attack.rate."""
    from sslguard.cluster import kmeans
    from sslguard.data import load_digits_dataset, poison_dataset
    from sslguard.data.attacks import build_attack

    with pytest.raises(ValueError, match=r"k=9 clusters asked for only 5 embeddings"):
        kmeans(np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32), 9)
    ds = load_digits_dataset("test").subset(np.arange(40))
    with pytest.raises(ValueError, match=r"^attack\.rate asks for 36 poisons but only \d+ images are eligible"):
        poison_dataset(ds, build_attack("htba", target=0, rate=0.9, rate_of="dataset"))


# ------------------------------------------------------------------------------------------ scripts


def _script(name):
    spec = importlib.util.spec_from_file_location(f"robust_{name}", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("script,argv,key", [
    ("detect", ["encoder=/nonexistent/enc.safetensors"], "encoder"),
    ("detect", ["data.name=imagefolder", "data.root=/nonexistent/photos"], "data.root"),
    ("detect", ["ssl.epochs=[1"], "ssl.epochs"),
    ("train_ssl", ["ssl.batch_size=-4"], "ssl.batch_size"),
    ("train_ssl", ["ssl.method=moco"], "ssl.method"),
    ("poison", ["attack.rate=1.5"], "attack.rate"),
    ("poison", ["data.subset_per_class=0"], "data.subset_per_class"),
])
def test_script_main_returns_2_with_one_line(tmp_path, capsys, script, argv, key):
    rc = _script(script).main([*argv, f"output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"config error: {key}: "), err
    assert not (tmp_path / "out").exists()  # nothing was started


def test_scripts_exit_2_without_traceback(tmp_path):
    """The real processes: exit status 2, one line on stderr naming the key or file, no traceback."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"ssl: !!python/object/apply:os.system ['touch {marker}']\n")
    cases = [
        ("poison.py", ["attack.rate=1.5"], "config error: attack.rate: "),
        ("train_ssl.py", ["--config", str(evil)], f"config error: {evil}: not valid YAML"),
        ("detect.py", ["data.name=imagefolder", "data.root=/nonexistent/photos"], "config error: data.root: "),
    ]
    procs = [(subprocess.Popen([sys.executable, str(ROOT / "scripts" / s), *argv, f"output_dir={tmp_path / 'o'}"],
                               cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), expect)
             for s, argv, expect in cases]  # started together: their imports overlap
    for proc, expect in procs:
        out, err = proc.communicate(timeout=300)
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == 2, (proc.args, proc.returncode, err[-2000:])
        assert len(lines) == 1 and lines[0].startswith(expect) and "Traceback" not in err, err[-2000:]
    assert not marker.exists() and not (tmp_path / "o").exists()
