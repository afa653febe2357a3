"""The SSL-detection benchmark's verdict and table (no training: rows are built by hand from known cases)."""

import pytest

from benchmarks.detect import BenchConfig, learned_verdict, write_table
from sslguard.config import ConfigError

PURE = [{"cluster": 0, "size": 510, "poisoned": 490}, {"cluster": 1, "size": 900, "poisoned": 10}]
MIXED = [{"cluster": 0, "size": 1100, "poisoned": 190}, {"cluster": 1, "size": 900, "poisoned": 310}]


@pytest.mark.parametrize("rates, purity, expected", [
    ({"triggered": 0.9, "random_patch": 0.1}, PURE, "**learned**"),
    ({"triggered": 0.95, "random_patch": 0.9}, PURE, "any patch"),
    ({"triggered": 0.3, "random_patch": 0.08}, MIXED, "partly learned"),
    ({"triggered": 0.08, "random_patch": 0.05}, MIXED, "**not learned**"),
    ({"triggered": 0.9, "random_patch": 0.1}, MIXED, "partly learned"),  # transfers, but no cluster to find
    ({"triggered": 0.1, "random_patch": 0.1}, PURE, "poisons clustered"),
])
def test_verdict_needs_both_transfer_and_a_pure_cluster(rates, purity, expected):
    assert expected in learned_verdict(rates, purity, 500)


def test_verdict_names_the_best_cluster():
    v = learned_verdict({"triggered": 0.9, "random_patch": 0.1}, PURE, 500)
    assert "490 of the 500 poisons among 510 members" in v


def _row(setting, detector):
    return {"setting": setting, "n_images": 10000, "n_poisoned": 500, "detector": detector,
            "learned": {"triggered": 0.08, "random_patch": 0.05, "clean": 0.04}, "cluster_purity": MIXED,
            "precision": 0.1, "recall": 0.2, "f1": 0.13, "auroc": 0.5, "top10_precision": 0.0,
            "top50_precision": 0.02, "top100_precision": 0.02, "toptrue_precision": 0.03, "seconds": 1.0,
            "cpu_s": 1.0, "embed_s": 1.0, "cluster_s": 0.5, "tracemalloc_peak_mb": 1.0, "peak_rss_mb": 100.0}


def test_table_has_a_row_per_detector_and_one_verdict_per_setting(tmp_path):
    path = write_table([_row("htba12_50", "poisoncam"), _row("htba12_50", "patchsearch")], tmp_path / "t.md")
    text = path.read_text()
    assert text.count("| htba12_50 |") == 2
    assert text.count("- htba12_50: **not learned**") == 1


def test_bench_config_checks_training_knobs():
    with pytest.raises(ConfigError, match="min_scale"):
        BenchConfig(min_scale=1.5).validate()
    with pytest.raises(ConfigError, match="mixed_precision"):
        BenchConfig(mixed_precision="fp8").validate()
    with pytest.raises(ConfigError, match="method"):
        BenchConfig(method="moco").validate()
    with pytest.raises(ConfigError, match="augment"):
        BenchConfig(augment="strong").validate()
    BenchConfig(min_scale=0.2, mixed_precision="no", method="byol", augment="lightly").validate()


def test_detector_seeds_repeat_detection_on_one_encoder(cifar10_root, tmp_path):
    """A tiny real run: one encoder (1 epoch), two k-means/detector seeds, one row per seed and detector."""
    import json

    from benchmarks.detect import run_detect_benchmark

    cfg = BenchConfig(settings=["htba12_50"], out_dir=str(tmp_path), n_per_class=30, train_epochs=1, width=8,
                      batch_size=64, detector_seeds=[0, 3], detectors=["poisoncam"], data_root=str(cifar10_root),
                      detector_params={"poisoncam": {"n_probe": 4, "n_null": 16, "classifier_images": 50,
                                                     "classifier_epochs": 1}})
    cfg.validate()
    table = run_detect_benchmark(cfg).read_text()
    rows = json.loads((tmp_path / "detect_results.json").read_text())
    assert [(r["detector"], r["detector_seed"]) for r in rows] == [("poisoncam", 0), ("poisoncam", 3)]
    assert rows[0]["info"]["params"]["seed"] == 0 and rows[1]["info"]["params"]["seed"] == 3
    assert (tmp_path / "htba12_50" / "seed3" / "poisoncam_scores.csv").exists()
    assert "| poisoncam | 3 |" in table
    with pytest.raises(ConfigError, match="detector_seeds"):
        BenchConfig(detector_seeds=[1, 1]).validate()


def test_encoder_recipe_is_an_ssl_config_with_the_trainers_defaults():
    """The benchmark trains through the product's path; its recipe only sets what it always set, so the
    rest (lr, weight decay, heads, temperature, momentum) must equal what train_ssl/build_ssl_model default to."""
    import inspect

    from benchmarks.detect import encoder_config
    from sslguard.models.ssl import BYOL, SimCLR
    from sslguard.train.ssl import train_ssl

    ssl = encoder_config(method="byol", width=16, epochs=39, min_scale=None, augment="cifar", channels_last=True)
    assert (ssl.method, ssl.width, ssl.epochs, ssl.min_scale, ssl.augment, ssl.channels_last) == (
        "byol", 16, 39, 0.08, "default", True)
    assert encoder_config(augment="lightly", min_scale=0.2).augment == "lightly"
    trainer = inspect.signature(train_ssl).parameters
    for key in ("lr", "weight_decay", "optimizer", "warmup_epochs"):
        assert getattr(ssl, key) == trainer[key].default, key
    assert ssl.temperature == inspect.signature(SimCLR).parameters["temperature"].default
    assert ssl.momentum_base == inspect.signature(BYOL).parameters["momentum_base"].default
    assert ssl.proj_dim is None and ssl.hidden_dim is None  # build_ssl_model's per-method defaults
    with pytest.raises(ValueError, match="augment"):
        encoder_config(augment="strong")
    with pytest.raises(ValueError, match="method"):
        encoder_config(method="moco")


def test_train_encoder_trains_through_the_pipeline_and_resumes(tmp_path):
    """The benchmark's train_encoder is the pipeline's, seeded as before: same weights twice, and a second
    call with the same recipe resumes the finished run instead of training again."""
    import numpy as np
    import torch

    from benchmarks.detect import train_encoder
    from sslguard.data import load_digits_dataset

    ds = load_digits_dataset("train").subset(np.arange(64))
    kw = dict(width=4, epochs=1, batch_size=32, seed=1)
    a, info = train_encoder(ds, output_dir=tmp_path / "a", **kw)
    b, _ = train_encoder(ds, output_dir=tmp_path / "b", **kw)
    assert info["encoder_path"] == str(tmp_path / "a" / "encoder.safetensors") and info["augment"] == "cifar"
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    again, info2 = train_encoder(ds, output_dir=tmp_path / "a", **kw)
    assert info2["final_loss"] == info["final_loss"]
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in a.state_dict().items())
