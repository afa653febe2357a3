"""SimCLR/BYOL models and safetensors encoder files."""

import json

import pytest
import torch

from sslguard.models.ssl import (
    BYOL,
    SimCLR,
    build_ssl_model,
    load_backbone,
    make_backbone,
    read_backbone_meta,
    save_backbone,
)


def _backbone(width=4):
    torch.manual_seed(0)
    return make_backbone("convnet4", width=width)


def test_simclr_loss_is_ntxent_over_both_views():
    m = build_ssl_model("simclr", _backbone(), proj_dim=8, hidden_dim=16, temperature=0.5)
    assert isinstance(m, SimCLR) and m.criterion.gather_distributed
    x = torch.randn(6, 3, 16, 16)
    loss = m(x, x + 0.01 * torch.randn_like(x))
    # with 6 images there are 10 candidates per row; a random head cannot beat log(10) by much
    assert 0.5 < float(loss.detach()) < 4.0
    loss.backward()
    assert m.backbone.stages["block1"][0][0].weight.grad is not None


def test_byol_momentum_network_is_frozen_and_follows_cosine_schedule():
    m = build_ssl_model("byol", _backbone(), proj_dim=8, hidden_dim=16, momentum_base=0.9)
    assert isinstance(m, BYOL)
    assert not any(p.requires_grad for p in m.backbone_momentum.parameters())
    x = torch.randn(4, 3, 16, 16)
    loss = m(x, x.flip(-1))
    assert -1.0 <= float(loss.detach()) <= 1.0
    loss.backward()
    assert all(p.grad is None for p in m.backbone_momentum.parameters())
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(1.0)
    before = [p.clone() for p in m.backbone_momentum.parameters()]
    assert m.update_momentum(0, 10) == pytest.approx(0.9)
    after = list(m.backbone_momentum.parameters())
    online = list(m.backbone.parameters())
    for b, a, o in zip(before, after, online):
        assert torch.allclose(a, 0.9 * b + 0.1 * o, atol=1e-6)
    assert m.update_momentum(10, 10) == pytest.approx(1.0)


def test_build_ssl_model_rejects_unknown_method():
    with pytest.raises(ValueError, match="ssl.method"):
        build_ssl_model("moco", _backbone())


def test_save_load_round_trip_identical_outputs(tmp_path):
    b = _backbone(width=6)
    b.eval()
    with torch.no_grad():  # non-default BN statistics must survive the round trip too
        b.stages["block1"][0][1].running_mean.add_(0.3)
    path = save_backbone(tmp_path / "enc.safetensors", b, {"method": "simclr", "epochs": 7})
    loaded = load_backbone(path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), b(x))
    meta = read_backbone_meta(path)
    assert meta["backbone"] == "convnet4" and meta["backbone_kwargs"] == {"width": 6}
    assert meta["method"] == "simclr" and meta["epochs"] == 7
    # the file is plain safetensors (8-byte header length, then a JSON header)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert "__metadata__" in json.loads(raw[8:8 + n])


def test_round_trip_cifar_resnet_and_timm_aliases(tmp_path):
    b = make_backbone("cifar_resnet18", width=8).eval()
    loaded = load_backbone(save_backbone(tmp_path / "r.safetensors", b))
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(loaded(x), b(x))
    pytest.importorskip("timm")
    t = make_backbone("timm:resnet10t").eval()
    lt = load_backbone(save_backbone(tmp_path / "t.safetensors", t))
    assert torch.equal(lt(x), t(x))


def test_tampered_file_is_refused(tmp_path):
    path = save_backbone(tmp_path / "enc.safetensors", _backbone())
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # flip bits in the last tensor's data
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum"):
        load_backbone(bad)


def test_non_safetensors_file_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    p = tmp_path / "enc.safetensors"
    torch.save({"x": Evil()}, p)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_backbone(p)
    assert not marker.exists()
    with pytest.raises(FileNotFoundError):
        load_backbone(tmp_path / "missing.safetensors")


def test_safetensors_without_our_metadata_is_refused(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(p))
    with pytest.raises(ValueError, match="not an sslguard encoder"):
        load_backbone(p)


def test_wrong_backbone_kwargs_caught_at_save(tmp_path):
    b = _backbone(width=6)
    with pytest.raises(ValueError, match="does not rebuild"):
        save_backbone(tmp_path / "x.safetensors", b, backbone_kwargs={"width": 8})
    assert not (tmp_path / "x.safetensors").exists()
