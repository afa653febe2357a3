"""Property-based fuzzing (hypothesis) of configs and attacks.

- Random dotted overrides on every script's config give a valid config or one :class:`ConfigError`
  whose one-line message starts with a dotted key of that config, never another exception.
- Random attack parameters give a :class:`ValueError` naming a parameter, or a poisoned dataset whose
  poison count matches the rate, which is the same for the same seed, and whose pixels stay uint8
  images of the original shape, changed only where the manifest says.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import sslguard.config as config_module
from sslguard.config import ConfigError, load_config
from sslguard.data import ArrayDataset, poison_dataset
from sslguard.data.attacks import ATTACKS, build_attack

CONFIG_CLASSES = [getattr(config_module, n) for n in ("PoisonConfig", "TrainSSLConfig", "DetectConfig")
                  if hasattr(config_module, n)]


def dotted_keys(cls, prefix: str = "") -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        sub = tp if dataclasses.is_dataclass(tp) else (inner[0] if inner else None)
        out.append(key)
        if sub is not None:
            out += dotted_keys(sub, key + ".")
    return out


YAML_VALUES = ["~", "null", "[1, 2", "{a: 1}", "{", "]", "yes", "no", "0x1F", "1e400", "-1e400", ".nan", ".inf", "-.inf",
               "'quoted'", "[]", "{}", "- a\n- b", "!!python/object/apply:os.system ['true']", "!!binary aGVsbG8=",
               "&a [*a]", "*undefined", "2026-11-21", "1_000", "0o17", "' unbalanced", "a: b: c", "\t", "%YAML 1.2",
               "-1", "0", "1", "2", "3", "100000000000000000000", "0.5", "1.5", "-0.5", "digits", "imagefolder",
               "htba", "simclr", "convnet4", "/nonexistent/path", "skip", "raise", "true", "false"]

values = st.one_of(
    st.sampled_from(YAML_VALUES),
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
)


def overrides_for(cls):
    keys = dotted_keys(cls)
    key = st.one_of(st.sampled_from(keys), st.sampled_from(keys).map(lambda k: k + ".zz"),
                    st.from_regex(r"[a-z_]{1,8}(\.[a-z_]{1,8}){0,2}", fullmatch=True))
    return st.lists(st.tuples(key, values).map(lambda kv: f"{kv[0]}={kv[1]}"), min_size=1, max_size=4)


KEY_RE = re.compile(r"^(?P<key>[A-Za-z_][\w.\[\]-]*): \S")


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__name__)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_overrides_give_a_config_or_a_config_error_naming_a_key(cls, data):
    overrides = data.draw(overrides_for(cls))
    try:
        cfg = load_config(cls, None, overrides)
    except ConfigError as exc:
        msg = str(exc)
        assert "\n" not in msg, msg
        m = KEY_RE.match(msg)
        assert m, f"does not start with a key: {msg!r}"
        key = m.group("key")
        top = {f.name for f in dataclasses.fields(cls)}
        given_keys = [o.split("=", 1)[0].strip() for o in overrides]
        assert key.split(".")[0].split("[")[0] in top | {k.split(".")[0] for k in given_keys}, (msg, overrides)
        return
    assert isinstance(cfg, cls)
    cfg.validate()  # a config that loads is valid, and stays valid when checked again


def test_override_value_errors_name_the_key():
    for cls in CONFIG_CLASSES:
        key = "data.image_size"
        for raw in ("[1, 2", "{", "!!python/object/apply:os.system ['true']", "*undefined"):
            with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: "):
                load_config(cls, None, [f"{key}={raw}"])


# ---------------------------------------------------------------------------------------- attacks


def toy(n_classes: int, per_class: int, h: int, w: int, seed: int) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    n = n_classes * per_class
    images = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)  # full range: triggers must clip
    labels = np.tile(np.arange(n_classes), per_class)
    return ArrayDataset(images, labels, [f"c{i}" for i in range(n_classes)], keys=7 + 5 * np.arange(n))


PARAMS = {
    "htba": {"size_fraction": st.floats(-0.2, 1.2), "trigger_size": st.one_of(st.none(), st.integers(-2, 40))},
    "badnets": {"size_fraction": st.floats(-0.2, 1.2), "trigger_size": st.one_of(st.none(), st.integers(-2, 40)),
                "corner": st.sampled_from(["top_left", "top_right", "bottom_left", "bottom_right", "centre"]),
                "margin": st.integers(-2, 20)},
    "blend": {"alpha": st.floats(-0.5, 1.5)},
    "blend_supervised": {"alpha": st.floats(-0.5, 1.5)},
    "sig": {"delta": st.floats(-50, 300), "frequency": st.floats(-2, 20)},
    "wanet": {"k": st.integers(-1, 40), "s": st.floats(-1, 3), "grid_rescale": st.floats(-1, 3)},
    "ctrl": {"magnitude": st.floats(-10, 300), "window_size": st.integers(-1, 64)},
}


@st.composite
def attack_case(draw):
    name = draw(st.sampled_from(sorted(PARAMS)))
    params = {k: draw(v) for k, v in PARAMS[name].items() if draw(st.booleans())}
    common = dict(target=draw(st.integers(0, 3)), rate=draw(st.one_of(st.floats(0.0, 0.35), st.floats(0.0, 1.0))),
                  rate_of=draw(st.sampled_from(["target", "dataset"])), seed=draw(st.integers(0, 2**31 - 1)))
    shape = (draw(st.integers(6, 40)), draw(st.integers(6, 40)))
    return name, common, params, shape


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=attack_case())
def test_random_attack_parameters(case):
    name, common, params, (h, w) = case
    ds = toy(3, 8, h, w, seed=common["seed"] % 1000)
    try:
        attack = build_attack(name, **common, **params)
        poisoned, manifest = poison_dataset(ds, attack)
    except ValueError as exc:
        event(f"refused: {type(exc).__name__}")
        msg = str(exc)
        names = [p for p in inspect.signature(ATTACKS[name].__init__).parameters if p != "self"]
        assert any(p in msg for p in [*names, "image", "trigger", "patch"]), (msg, case)
        return
    event(f"poisoned ({name})")
    # the count matches the rate (of the target class or of the dataset)
    labels = ds.labels
    base = int((labels == common["target"]).sum()) if common["rate_of"] == "target" else len(labels)
    assert manifest.n_poisoned == int(round(common["rate"] * base))
    keys = np.asarray(manifest.poisoned_indices)
    assert len(np.unique(keys)) == len(keys) and np.isin(keys, ds.keys).all()
    # pixels: uint8 images of the same shape; only the manifest's images differ from the clean ones
    poisoned_pos = set(ds.positions_of(keys).tolist())
    arrays = []
    for i in range(len(ds)):
        arr = np.asarray(poisoned.load_array(i))
        assert arr.dtype == np.uint8 and arr.shape == (h, w, 3)
        if i not in poisoned_pos:
            assert np.array_equal(arr, ds.load_array(i))
        arrays.append(arr)
    # determinism: the same seed gives the same manifest and the same bytes
    again, manifest2 = poison_dataset(ds, build_attack(name, **common, **params))
    assert manifest2.to_csv_text() == manifest.to_csv_text()
    for i in sorted(poisoned_pos):
        assert np.array_equal(again.load_array(i), arrays[i])
