"""The GPU reference-encoder recipe, run on the CPU at toy size: the pack keeps pixels and keys, the
time guard stops at an epoch end, and the fp16 encoder comes back in parts that rejoin and load."""

import json

import numpy as np
import pytest
import torch

from benchmarks.gpu import load_packed_cifar10, pack_cifar10, split_file, train_reference_encoder
from sslguard.data.datasets import find_cifar10_root, load_cifar10
from sslguard.models.ssl import load_backbone

needs_cifar = pytest.mark.skipif(find_cifar10_root() is None, reason="CIFAR-10 (../shared/data/cifar10) not present")


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    if find_cifar10_root() is None:
        pytest.skip("CIFAR-10 (../shared/data/cifar10) not present")
    # 40 per class of the first 2,000 training images, so both labels and the target class are there
    path = tmp_path_factory.mktemp("pack") / "pack.npz"
    return pack_cifar10(path, train_positions=np.arange(0, 50000, 125), n_test=300, seed=0)


@needs_cifar
def test_pack_decodes_to_the_loaders_pixels_and_keys(pack):
    train, test = load_packed_cifar10(pack)
    full_train, full_test = load_cifar10(None, "train"), load_cifar10(None, "test")
    assert list(train.keys) == list(range(0, 50000, 125)) and len(test) == 300
    assert np.array_equal(train.images, full_train.images[train.keys])
    assert np.array_equal(train.labels, full_train.labels[train.keys])
    assert np.array_equal(test.images, full_test.images[test.keys])
    assert np.array_equal(test.labels, full_test.labels[test.keys])
    assert len(set(test.labels.tolist())) == 10


def test_split_file_parts_rejoin(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 2500, dtype=np.uint8).tobytes()
    (tmp_path / "f.bin").write_bytes(data)
    parts = split_file(tmp_path / "f.bin", part_bytes=1000)
    assert [p.name for p in parts] == ["f.bin.part00", "f.bin.part01", "f.bin.part02"]
    assert [p.stat().st_size for p in parts] == [1000, 1000, 500]
    assert b"".join(p.read_bytes() for p in parts) == data


@needs_cifar
def test_reference_encoder_stops_at_the_hard_limit_and_exports_fp16_parts(pack, tmp_path):
    rep = train_reference_encoder(pack, tmp_path, setting="htba_50", method="byol", backbone="convnet4", width=4,
                                  batch_size=50, budget_s=60, hard_limit_s=0.0, max_epochs=3, mixed_precision="no",
                                  channels_last=False, probe_steps=2, name="enc")
    # 400 images, 20 of class 0 poisoned at 50%
    assert rep["n_train"] == 400 and rep["n_poisoned"] == 20
    assert rep["epochs_planned"] == 3 and rep["epochs_done"] == 1 and "after epoch 1 of 3" in rep["stopped_early"]
    enc = tmp_path / "work" / "enc.safetensors"
    # only small files travel back from the device
    assert sorted(f.name for f in tmp_path.iterdir() if f.is_file()) == sorted(
        ["enc.json", "enc_history.json", *rep["parts"]])
    joined = b"".join((tmp_path / p).read_bytes() for p in rep["parts"])
    assert joined == enc.read_bytes()
    net = load_backbone(enc)
    assert net.encoder_meta["dtype"] == "float16" and net.encoder_meta["setting"] == "htba_50"
    from safetensors.torch import load_file

    assert {v.dtype for v in load_file(str(enc)).values() if v.is_floating_point()} == {torch.float16}
    assert 0.0 <= rep["knn_top1"] <= 1.0
    assert set(rep["learned"]) >= {"triggered", "random_patch", "clean"}
    assert json.loads((tmp_path / "enc.json").read_text())["sha256"] == rep["sha256"]


@needs_cifar
def test_reference_encoder_trains_the_planned_epochs_within_budget(pack, tmp_path):
    rep = train_reference_encoder(pack, tmp_path, setting="htba_50", method="simclr", backbone="convnet4", width=4,
                                  batch_size=50, budget_s=60, max_epochs=2, mixed_precision="no",
                                  channels_last=False, probe_steps=2, name="enc")
    assert rep["stopped_early"] is None and rep["epochs_done"] == rep["epochs_planned"] == 2
    assert rep["img_per_s"] > 0 and len(json.loads((tmp_path / "enc_history.json").read_text())) == 2


@needs_cifar
def test_fixed_epochs_that_cannot_fit_restart_with_the_epochs_that_do(pack, tmp_path):
    # 1,000 toy epochs cannot fit 4 s: after epoch 2 the run projects its end, starts again with the
    # epochs that fit (the cosine schedule needs its length), and says so
    rep = train_reference_encoder(pack, tmp_path, setting="htba_50", method="byol", backbone="convnet4", width=4,
                                  batch_size=50, epochs=1000, hard_limit_s=4.0, check_epoch=2, mixed_precision="no",
                                  channels_last=False, name="enc")
    assert len(rep["replanned"]) == 1 and "restarted with" in rep["replanned"][0]
    assert 1 <= rep["epochs_planned"] < 1000 and "probe_img_per_s" not in rep
    assert rep["stopped_early"] is None or rep["epochs_done"] >= 1
    assert rep["img_per_s_steady"] is None or rep["img_per_s_steady"] > 0
