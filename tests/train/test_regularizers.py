"""Each regulariser computes the loss its paper defines, and trains through the classifier trainer."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslguard.models.classifier import build_classifier
from sslguard.train.regularizers import (
    REGULARIZERS,
    ContrastiveRegularizer,
    LogitSqueezing,
    ManifoldMixup,
    Mixup,
    build_regularizer,
    supervised_contrastive_loss,
)


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = build_classifier("convnet4", 10, width=4)
    # Eval mode: BatchNorm uses running statistics, so a forward pass does not depend on the rest of
    # the batch and a loss can be recomputed by hand exactly.
    return m.eval()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 3, 16, 16, generator=g)
    y = torch.randint(0, 10, (12,), generator=g)
    y[:4] = torch.tensor([1, 1, 2, 2])  # some shared labels, so SupCon has positives beyond the other view
    return x, y, torch.arange(12)


def test_logit_squeezing_adds_weighted_mean_squared_norm(model, batch):
    x, y, idx = batch
    with torch.no_grad():
        z = model(x)
        ce = F.cross_entropy(z, y)
        sq = (z ** 2).sum(dim=1).mean()
        for w in (0.0, 0.05, 1.5):
            got = LogitSqueezing(weight=w)(model, x, y, idx)
            torch.testing.assert_close(got, ce + w * sq)
    assert float(sq) > 0  # the penalty is not vacuous on this model


def test_mixup_with_alpha_to_zero_is_plain_cross_entropy(model, batch):
    x, y, idx = batch
    reg = Mixup(alpha=1e-8, seed=3)
    with torch.no_grad():
        ce = F.cross_entropy(model(x), y)
        lams = []
        for _ in range(6):
            got = reg(model, x, y, idx)
            lams.append(reg.last_lam)
            torch.testing.assert_close(got, ce, rtol=1e-5, atol=1e-6)
        assert Mixup(alpha=0.0)(model, x, y, idx).item() == pytest.approx(ce.item(), rel=1e-6)
    assert set(lams) <= {0.0, 1.0}


def test_mixup_mixes_inputs_and_targets(model, batch):
    x, y, idx = batch
    reg = Mixup(alpha=1.0, seed=0)
    with torch.no_grad():
        got = reg(model, x, y, idx)
        lam, perm = reg.last_lam, reg.last_perm
        z = model(lam * x + (1 - lam) * x[perm])
        want = lam * F.cross_entropy(z, y) + (1 - lam) * F.cross_entropy(z, y[perm])
        torch.testing.assert_close(got, want)
        assert 0.0 < lam < 1.0
        assert abs(got.item() - F.cross_entropy(model(x), y).item()) > 1e-4


def _forward_mixing_at(model, x, stage, lam, perm):
    bb = model.backbone
    h = x
    for name in bb.stage_names:
        h = bb.stages[name](h)
        if name == stage:
            h = lam * h + (1 - lam) * h[perm]
    return model.head(bb.pool(h))


def test_manifold_mixup_mixes_at_the_chosen_stage(model, batch):
    x, y, idx = batch
    reg = ManifoldMixup(alpha=2.0, stages=["block2"], seed=0)
    with torch.no_grad():
        got = reg(model, x, y, idx)
        lam, perm = reg.last_lam, reg.last_perm
        assert reg.last_stage == "block2"
        z = _forward_mixing_at(model, x, "block2", lam, perm)
        torch.testing.assert_close(got, lam * F.cross_entropy(z, y) + (1 - lam) * F.cross_entropy(z, y[perm]))
        z_in = model(lam * x + (1 - lam) * x[perm])  # input mixup with the same draws gives another loss
        input_loss = lam * F.cross_entropy(z_in, y) + (1 - lam) * F.cross_entropy(z_in, y[perm])
        assert abs(got.item() - input_loss.item()) > 1e-4
    # the hook is removed afterwards: a plain forward is unmixed again
    assert not model.backbone.stages["block2"]._forward_hooks


def test_manifold_mixup_draws_every_eligible_stage(model, batch):
    x, y, idx = batch
    reg = ManifoldMixup(seed=0)
    assert reg.eligible(model) == ["input", "block1", "block2", "block3"]
    seen = set()
    with torch.no_grad():
        for _ in range(40):
            reg(model, x, y, idx)
            seen.add(reg.last_stage)
    assert seen == {"input", "block1", "block2", "block3"}
    with pytest.raises(ValueError, match="not stages"):
        ManifoldMixup(stages=["nope"]).eligible(model)


def _supcon_loop(z1, z2, labels, t):
    """Khosla et al. 2020 eq. 2 written as the sum it is, anchor by anchor."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    y = torch.cat([labels, labels]).tolist()
    total = 0.0
    for i in range(len(y)):
        others = [a for a in range(len(y)) if a != i]
        denom = sum(math.exp(float(z[i] @ z[a]) / t) for a in others)
        pos = [p for p in others if y[p] == y[i]]
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / t) / denom) for p in pos) / len(pos)
    return total / len(y)


def test_supervised_contrastive_matches_its_definition_and_ntxent():
    from lightly.loss import NTXentLoss

    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    got = supervised_contrastive_loss(z1, z2, labels, temperature=0.5)
    assert got.item() == pytest.approx(_supcon_loop(z1, z2, labels, 0.5), rel=1e-5)
    # every image its own class: only the other view is a positive, which is SimCLR's NT-Xent
    unique = torch.arange(6)
    torch.testing.assert_close(supervised_contrastive_loss(z1, z2, unique, 0.5), NTXentLoss(temperature=0.5)(z1, z2))


def test_contrastive_regularizer_adds_the_term_on_penultimate_features(model, batch):
    x, y, idx = batch
    flip = lambda t: t.flip(-1)  # noqa: E731  (a deterministic second view)
    for supervised in (True, False):
        reg = ContrastiveRegularizer(weight=0.3, temperature=0.2, supervised=supervised, view=flip)
        with torch.no_grad():
            got = reg(model, x, y, idx)
            h1, h2 = model.penultimate(x), model.penultimate(flip(x))
            want = F.cross_entropy(model(x), y) + 0.3 * reg.contrastive(h1, h2, y)
        torch.testing.assert_close(got, want)
        assert reg.contrastive(h1, h2, y).item() > 0


@pytest.mark.parametrize("name", REGULARIZERS)
def test_each_regularizer_trains_through_the_trainer(name, digits_train):
    from sslguard.data import subset_per_class
    from sslguard.train.classifier import train_classifier

    torch.manual_seed(0)
    m = build_classifier("convnet4", 10, width=4)
    before = [p.detach().clone() for p in m.parameters()]
    reg = build_regularizer(name, seed=0)
    assert (reg is None) == (name == "none")
    ds = subset_per_class(digits_train, 8, seed=0)
    hist = train_classifier(m, ds, epochs=1, batch_size=32, lr=0.05, seed=0, loss_fn=reg, progress=False)
    assert all(np.isfinite(hist.loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))


def test_build_regularizer_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown regulariser"):
        build_regularizer("dropout")
    with pytest.raises(ValueError, match="takes no parameters"):
        build_regularizer("none", weight=1.0)
    assert isinstance(build_regularizer("logit_squeezing", weight=0.2), LogitSqueezing)
