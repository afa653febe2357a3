"""train_ssl: seeded, resumable to the same weights, exports a loadable encoder, monitors kNN."""

import json

import pytest
import torch

from sslguard.data import load_digits_dataset
from sslguard.models.ssl import build_ssl_model, load_backbone, make_backbone
from sslguard.train.ssl import load_checkpoint, train_ssl
from sslguard.utils import seed_everything

KW = dict(batch_size=16, image_size=16, progress=False, seed=3)


@pytest.fixture(scope="module")
def tiny():
    return load_digits_dataset("train", size=16).subset(range(64))


@pytest.fixture(scope="module")
def tiny_test():
    return load_digits_dataset("test", size=16).subset(range(40))


def _model(method="simclr", seed=0):
    seed_everything(seed)
    return build_ssl_model(method, make_backbone("convnet4", width=4), proj_dim=8, hidden_dim=16)


def _flat(module):
    return torch.cat([v.detach().float().flatten() for v in module.state_dict().values()])


def test_same_seed_same_weights_other_seed_differs(tiny, tmp_path):
    a, b, c = _model(), _model(), _model()
    train_ssl(a, tiny, epochs=2, output_dir=tmp_path / "a", **KW)
    train_ssl(b, tiny, epochs=2, output_dir=tmp_path / "b", **KW)
    train_ssl(c, tiny, epochs=2, output_dir=tmp_path / "c", **{**KW, "seed": 4})
    assert torch.equal(_flat(a), _flat(b))
    assert not torch.allclose(_flat(a), _flat(c))


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_resumed_run_ends_with_same_weights(tiny, tmp_path, method):
    straight = _model(method)
    r_straight = train_ssl(straight, tiny, epochs=4, output_dir=tmp_path / "straight", checkpoint_every=1, **KW)

    # first call: the first 2 epochs of a 4-epoch schedule, checkpointing each epoch ...
    part = _model(method)
    r1 = train_ssl(part, tiny, epochs=2, schedule_epochs=4, output_dir=tmp_path / "resumed", checkpoint_every=1, **KW)
    assert r1.global_step == 8 and load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["epoch"] == 2
    # ... then a fresh process-like call (new model object, other init) resumes to epoch 4
    fresh = _model(method, seed=123)
    r2 = train_ssl(fresh, tiny, epochs=4, output_dir=tmp_path / "resumed", checkpoint_every=1, resume=True, **KW)
    assert r2.start_epoch == 2 and r2.global_step == 16
    assert torch.allclose(_flat(fresh), _flat(straight), atol=1e-5)
    assert r2.losses == pytest.approx(r_straight.losses, rel=1e-4)
    if method == "byol":  # the momentum network was restored, not re-copied from the online one
        assert torch.allclose(_flat(fresh.backbone_momentum), _flat(straight.backbone_momentum), atol=1e-5)
        assert not torch.allclose(_flat(fresh.backbone_momentum), _flat(fresh.backbone), atol=1e-4)


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_preloaded_corpus_trains_the_same_weights_as_the_loader(tiny, method):
    # preload only changes where batches come from (one resident tensor, indexed by the sampler's order)
    a, b = _model(method), _model(method)
    train_ssl(a, tiny, epochs=2, **KW)
    res = train_ssl(b, tiny, epochs=2, preload=True, **KW)
    assert torch.equal(_flat(a), _flat(b))
    assert res.global_step == 8
    # and the order still matters: another seed's batches give other weights
    c = _model(method)
    train_ssl(c, tiny, epochs=2, preload=True, **{**KW, "seed": 4})
    assert not torch.allclose(_flat(a), _flat(c))


def test_crash_mid_run_then_resume_matches(tiny, tmp_path):
    straight = _model()
    train_ssl(straight, tiny, epochs=3, output_dir=tmp_path / "s", **KW)

    class Crash(RuntimeError):
        pass

    def crash_after_2(epoch, record):
        if epoch == 2:
            raise Crash()

    with pytest.raises(Crash):
        train_ssl(_model(), tiny, epochs=3, output_dir=tmp_path / "r", on_epoch_end=crash_after_2, **KW)
    resumed = _model(seed=9)
    res = train_ssl(resumed, tiny, epochs=3, output_dir=tmp_path / "r", **KW)
    assert res.start_epoch == 2
    assert torch.allclose(_flat(resumed), _flat(straight), atol=1e-5)
    # a finished run resumes to "nothing to do" and leaves the weights alone
    again = _model(seed=10)
    res2 = train_ssl(again, tiny, epochs=3, output_dir=tmp_path / "r", **KW)
    assert res2.start_epoch == 3 and len(res2.history) == 3 and torch.equal(_flat(again), _flat(resumed))


def test_checkpoint_from_other_settings_is_refused(tiny, tmp_path):
    train_ssl(_model(), tiny, epochs=1, output_dir=tmp_path, **KW)
    with pytest.raises(ValueError, match="other settings.*lr"):
        train_ssl(_model(), tiny, epochs=2, lr=0.5, output_dir=tmp_path, **KW)
    # resume=False starts over and overwrites
    res = train_ssl(_model(), tiny, epochs=1, lr=0.5, output_dir=tmp_path, resume=False, **KW)
    assert res.start_epoch == 0


def test_checkpoint_with_other_augmentation_is_refused(tiny, tmp_path):
    from sslguard.train.augment import ssl_augmentations

    train_ssl(_model(), tiny, epochs=1, output_dir=tmp_path, augment=ssl_augmentations("simclr", 16), **KW)
    with pytest.raises(ValueError, match="other settings.*augment"):
        train_ssl(_model(), tiny, epochs=2, output_dir=tmp_path,
                  augment=ssl_augmentations("simclr", 16, min_scale=0.2), **KW)


def test_checkpoint_without_augment_key_still_resumes(tiny, tmp_path):
    # checkpoints written before the augmentation entered the fingerprint resume as before
    train_ssl(_model(), tiny, epochs=1, schedule_epochs=2, output_dir=tmp_path, **KW)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    del ckpt["fingerprint"]["augment"]
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    assert train_ssl(_model(), tiny, epochs=2, output_dir=tmp_path, **KW).start_epoch == 1


def test_encoder_export_and_knn_monitor(tiny, tiny_test, tmp_path):
    model = _model()
    res = train_ssl(model, tiny, epochs=2, output_dir=tmp_path, knn_every=1, knn_train=tiny, knn_test=tiny_test,
                    knn_k=5, **KW)
    assert [e for e, _ in res.knn] == [1, 2] and all(0.0 <= a <= 1.0 for _, a in res.knn)
    assert res.images_per_second > 0 and len(res.losses) == 2
    enc = load_backbone(res.encoder_path)
    meta = enc.encoder_meta
    assert meta["backbone"] == "convnet4" and meta["backbone_kwargs"] == {"width": 4}
    assert meta["method"] == "simclr" and meta["epochs"] == 2 and meta["image_size"] == 16
    x = torch.randn(3, 3, 16, 16)
    model.backbone.eval()
    assert torch.allclose(enc(x), model.backbone(x), atol=1e-6)
    assert json.loads((tmp_path / "history.json").read_text())[1]["epoch"] == 2


def test_bad_arguments_name_the_key(tiny, tmp_path):
    with pytest.raises(ValueError, match="ssl.batch_size"):
        train_ssl(_model(), tiny, epochs=1, **{**KW, "batch_size": 128})
    with pytest.raises(ValueError, match="ssl.mixed_precision"):
        train_ssl(_model(), tiny, epochs=1, mixed_precision="fp8", **KW)
    with pytest.raises(ValueError, match="knn"):
        train_ssl(_model(), tiny, epochs=1, knn_every=1, **KW)


def test_loss_decreases_on_digits(tiny):
    # Measured on one fixed pair of views of all 64 images: at this size an epoch's loss swings by about
    # 0.2 with the views it happened to draw, so first-vs-last epoch losses are a coin flip, while this
    # loss fell on each of 8 seeds tried (by 0.28 at seed 3).
    from sslguard.data.transforms import ResizeUint8
    from sslguard.train.augment import ssl_augmentations, view_keys

    x = torch.stack([ResizeUint8(16)(tiny[i][0]) for i in range(len(tiny))])
    pos = torch.arange(len(tiny))
    aug, _ = ssl_augmentations("simclr", 16)
    v0, v1 = aug(x, keys=view_keys(1234, 0, pos, 0)), aug(x, keys=view_keys(1234, 0, pos, 1))

    def fixed_view_loss(m):
        with torch.no_grad():
            return float(m.train()(v0, v1))

    model = _model()
    before = fixed_view_loss(model)
    train_ssl(model, tiny, epochs=8, optimizer="adamw", lr=1e-2, **{**KW, "batch_size": 32})
    assert fixed_view_loss(model) < before


def test_bf16_and_channels_last_run(tiny, tmp_path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # accelerate keeps one global state per process; its own tests reset it the same way
    AcceleratorState._reset_state(True)
    try:
        acc = Accelerator(mixed_precision="bf16", cpu=True)
        res = train_ssl(_model("byol"), tiny, epochs=1, accelerator=acc, channels_last=True, output_dir=tmp_path,
                        **KW)
        assert torch.isfinite(torch.tensor(res.losses)).all()
        assert load_backbone(res.encoder_path).encoder_meta["method"] == "byol"
    finally:
        AcceleratorState._reset_state(True)


def test_compiled_step_trains_as_the_eager_step(tiny, tmp_path, monkeypatch):
    # compile fuses the same step (the views switch to the masked pixel path, which gives the same
    # images): the same losses and weights up to float rounding (inductor's fused kernels sum in
    # another order). About 50 s on a CPU, nearly all of it compiling: in a cache of its own, as
    # inductor's shared on-disk cache handed a kernel built under ATEN_CPU_CAPABILITY=avx2 to a later
    # run without it on the same machine, which crashed that process.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    eager, compiled = _model("byol"), _model("byol")
    r_eager = train_ssl(eager, tiny, epochs=2, preload=True, **KW)
    r_comp = train_ssl(compiled, tiny, epochs=2, preload=True, compile=True, **KW)
    assert r_comp.losses == pytest.approx(r_eager.losses, rel=1e-3, abs=1e-4)
    assert torch.allclose(_flat(compiled), _flat(eager), atol=1e-3)
    assert not torch.equal(_flat(compiled), _flat(_model("byol")))  # it trained
