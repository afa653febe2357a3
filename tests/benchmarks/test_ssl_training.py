"""The SSL benchmark: throughput helper (fast) and a tiny end-to-end run on CIFAR-10 (slow)."""

import pytest
import torch


def test_measure_throughput_and_augment_are_positive():
    from benchmarks.ssl_training import measure_augment, measure_throughput

    x = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    assert measure_throughput("convnet4:4", x, steps=1, batch_size=16) > 0
    a = measure_augment(x, n_pil=8, reps=1)
    assert a["batched"] > 0 and a["lightly_pil"] > 0


def test_benchmark_cli_lists_ssl_subcommand(capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_script", Path(__file__).resolve().parents[2] / "scripts" / "benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(SystemExit):
        mod.main(["ssl", "--help"])
    assert "--minutes" in capsys.readouterr().out


@pytest.mark.slow
def test_tiny_benchmark_end_to_end(cifar10_root, tmp_path):
    from benchmarks.ssl_training import run_ssl_benchmark

    res = run_ssl_benchmark(minutes=0.05, n_train=300, batch_size=32, backbones=["convnet4:8"], throughput_steps=1,
                            knn_k=20, n_backdoor_test=100, cifar_root=cifar10_root, output=tmp_path / "ssl.md")
    assert set(res["encoders"]) == {"clean", "poisoned"} and res["backdoor_verdict"] in ("yes", "no")
    assert 0.0 <= res["encoders"]["clean"]["knn_top1"] <= 1.0
    text = (tmp_path / "ssl.md").read_text()
    assert "| convnet4:8 |" in text and (tmp_path / "ssl.json").exists()
