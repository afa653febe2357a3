"""Classifier trainer: batched augmentation, seeding, modes, the loss hook, and clean acc / ASR."""

import numpy as np
import pytest
import torch

from sslguard.data import load_digits_dataset, poison_dataset
from sslguard.data.attacks import build_attack
from sslguard.models.classifier import build_classifier, predict
from sslguard.train.classifier import TriggeredDataset, evaluate_classifier, random_crop_flip, train_classifier


@pytest.fixture(scope="module")
def small():
    ds = load_digits_dataset("train")
    return ds.subset(np.arange(160))


def test_random_crop_flip_is_a_seeded_shifted_crop():
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(random_crop_flip(x, padding=0, flip=False), x)
    a = random_crop_flip(x, 2, True, torch.Generator().manual_seed(3))
    b = random_crop_flip(x, 2, True, torch.Generator().manual_seed(3))
    assert a.dtype == torch.uint8 and a.shape == x.shape and torch.equal(a, b)
    # every output row is a (possibly flipped, shifted) window of the zero-padded input
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        windows = [padded[i, :, oy:oy + 8, ox:ox + 8] for oy in range(5) for ox in range(5)]
        assert any(torch.equal(a[i], w) or torch.equal(a[i], w.flip(-1)) for w in windows)


def test_same_seed_same_weights_and_loss_goes_down(small):
    runs = []
    for _ in range(2):
        m = build_classifier("convnet4", 10, width=4, seed=0)
        h = train_classifier(m, small, epochs=3, batch_size=32, lr=0.05, seed=1, progress=False)
        runs.append((m.state_dict(), h))
    (s1, h1), (s2, _) = runs
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert h1.loss[-1] < h1.loss[0] and len(h1.accuracy) == 3


def test_linear_mode_trains_only_the_head(small):
    m = build_classifier("convnet4", 10, width=4, seed=0)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    train_classifier(m, small, epochs=1, batch_size=32, lr=0.1, mode="linear", seed=0, progress=False)
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))  # BN stats too
    assert not torch.equal(before["head.weight"], after["head.weight"])


def test_loss_fn_and_hooks_are_used(small):
    calls = {"loss": 0, "epoch": []}

    def loss_fn(model, x, y, index):
        calls["loss"] += 1
        assert x.dtype == torch.float32 and len(index) == len(y)
        return torch.nn.functional.cross_entropy(model(x), y) * 0.0 + model(x).pow(2).mean()

    m = build_classifier("convnet4", 10, width=4, seed=0)
    h = train_classifier(m, small, epochs=2, batch_size=40, lr=0.05, seed=0, loss_fn=loss_fn,
                         on_epoch_end=lambda e, model, stats: calls["epoch"].append(e), progress=False)
    assert calls["loss"] == 2 * (len(small) // 40) and calls["epoch"] == [0, 1]
    assert np.isnan(h.accuracy).all()


def test_bad_arguments_are_refused(small):
    m = build_classifier("convnet4", 10, width=4, seed=0)
    with pytest.raises(ValueError, match="mode"):
        train_classifier(m, small, epochs=1, mode="probe")
    with pytest.raises(ValueError, match="epochs"):
        train_classifier(m, small, epochs=0)


def test_evaluate_classifier_matches_a_manual_count():
    train, test = load_digits_dataset("train"), load_digits_dataset("test")
    attack = build_attack("badnets", target=0, rate=0.1, rate_of="dataset", seed=0, size_fraction=0.15)
    poisoned, _ = poison_dataset(train, attack)
    m = build_classifier("convnet4", 10, width=4, seed=0)
    train_classifier(m, poisoned, epochs=2, batch_size=64, lr=0.05, seed=0, progress=False)
    res = evaluate_classifier(m, test, attack)
    _, logits = predict(m, test)
    assert res["clean_acc"] == pytest.approx(float((logits.argmax(1) == test.labels).mean()))
    non_target = np.flatnonzero(test.labels != attack.target)
    trig = TriggeredDataset(test.subset(non_target), attack)
    # the triggered copy really carries the trigger, and only there
    assert not np.array_equal(trig.load_array(0), test.load_array(int(non_target[0])))
    imgs = torch.from_numpy(np.stack([trig.load_array(i) for i in range(len(trig))])).permute(0, 3, 1, 2)
    from sslguard.data.transforms import to_float

    with torch.no_grad():
        manual = float((m.eval()(to_float(imgs)).argmax(1) == attack.target).float().mean())
    assert res["asr"] == pytest.approx(manual) and res["n_asr"] == len(non_target)
    assert np.isnan(evaluate_classifier(m, test)["asr"])
