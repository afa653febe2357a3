"""The committed GPU-trained reference encoders (benchmarks/encoders) load on the CPU through the
project's loader, say what they are, and still carry the backdoor they were trained with."""

import json
from pathlib import Path

import pytest

from benchmarks.detect import backdoor_learned, poisoned_cifar10, setting_attack
from sslguard.data.datasets import find_cifar10_root
from sslguard.models.ssl import load_backbone
from sslguard.utils.io import file_sha256

ENC = Path(__file__).resolve().parents[2] / "benchmarks" / "encoders"
NAMES = ["byol_cifar_resnet18_htba_50_seed0", "byol_cifar_resnet18_htba12_50_seed0"]


@pytest.mark.parametrize("name", NAMES)
def test_reference_encoder_loads_and_matches_its_record(name):
    path = ENC / f"{name}.safetensors"
    rec = json.loads((ENC / f"{name}.json").read_text())
    assert file_sha256(path) == rec["sha256"]
    net = load_backbone(path)  # also checks the tensors' own checksum
    meta = net.encoder_meta
    assert meta["backbone"] == "cifar_resnet18" and meta["method"] == "byol" and meta["dtype"] == "float16"
    assert meta["setting"] == rec["setting"] and meta["epochs"] == rec["epochs_done"]
    assert sum(p.numel() for p in net.parameters()) > 11_000_000


@pytest.mark.skipif(find_cifar10_root() is None, reason="CIFAR-10 (../shared/data/cifar10) not present")
def test_12px_reference_encoder_still_sends_triggered_images_to_the_target():
    # the device measured 0.998 triggered vs 0.074 random patch (50k bank, 1,000 test images); here a
    # 500-image bank and 100 test images, which is what a CPU test affords
    import torch

    torch.manual_seed(0)
    net = load_backbone(ENC / "byol_cifar_resnet18_htba12_50_seed0.safetensors")
    ds, _ = poisoned_cifar10("htba12_50", n_per_class=50, seed=0)
    rates = backdoor_learned(net, ds, setting_attack("htba12_50", seed=0), target=0, max_test=100)
    assert rates["triggered"] >= 0.8 and rates["random_patch"] <= 0.3 and rates["clean"] <= 0.2, rates
