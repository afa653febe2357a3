"""Classifier: layer access, channel masking, seeded construction, batched helpers in dataset order."""

import numpy as np
import pytest
import torch

from sslguard.data import load_digits_dataset
from sslguard.models.classifier import Classifier, build_classifier, layer_features, penultimate_activations, predict


@pytest.fixture(scope="module")
def model():
    return build_classifier("convnet4", 10, width=4, seed=0).eval()


def test_forward_penultimate_and_intermediates_agree(model):
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        inter = model.forward_intermediates(x)
        assert list(inter) == model.stage_names + ["penultimate", "logits"]
        assert inter["penultimate"].shape == (5, model.feature_dim)
        torch.testing.assert_close(inter["penultimate"], model.penultimate(x))
        torch.testing.assert_close(inter["logits"], model(x))
        assert inter[model.stage_names[-1]].shape[1] == model.feature_dim
    assert model.last_stage is model.stages[model.stage_names[-1]]


def test_seed_fixes_initial_weights():
    a, b = build_classifier("convnet4", 3, width=4, seed=7), build_classifier("convnet4", 3, width=4, seed=7)
    c = build_classifier("convnet4", 3, width=4, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["head.weight"], sc["head.weight"])


def test_prune_channels_zeroes_those_channels_and_replaces_an_old_mask():
    m = build_classifier("cifar_resnet18", 4, width=4, seed=0).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(m.feature_dim)
    mask[[0, 5]] = 0
    m.prune_channels(mask)
    with torch.no_grad():
        f = m.penultimate(x)
    assert torch.all(f[:, [0, 5]] == 0) and torch.all(f[:, 1] != 0)
    mask2 = torch.ones(m.feature_dim)
    mask2[3] = 0
    m.prune_channels(mask2)  # replaces, does not stack
    with torch.no_grad():
        f2 = m.penultimate(x)
    assert torch.all(f2[:, 3] == 0) and torch.all(f2[:, 0] != 0)
    # a pruned model saves and loads like any other
    m2 = build_classifier("cifar_resnet18", 4, width=4, seed=1)
    m2.prune_channels(torch.ones(m.feature_dim))
    m2.load_state_dict(m.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(m2.eval().penultimate(x), f2)


def test_helpers_return_dataset_order_independent_of_batch_size(model):
    ds = load_digits_dataset("test").subset(np.arange(37))
    k1, l1 = predict(model, ds, batch_size=5)
    k2, l2 = predict(model, ds, batch_size=64)
    assert np.array_equal(k1, ds.keys) and np.array_equal(k2, ds.keys)
    np.testing.assert_allclose(l1, l2, atol=1e-5)
    _, acts = penultimate_activations(model, ds, with_logits=True)
    np.testing.assert_allclose(acts["logits"], l1, atol=1e-5)
    _, feats = layer_features(model, ds, ["block2", "penultimate"])
    assert feats["block2"].shape == (37, 8)
    np.testing.assert_allclose(feats["penultimate"], acts["penultimate"], atol=1e-5)
    with pytest.raises(KeyError, match="unknown layers"):
        layer_features(model, ds, ["nope"])


def test_classifier_rejects_one_class(model):
    with pytest.raises(ValueError, match="num_classes"):
        Classifier(model.backbone, 1)
