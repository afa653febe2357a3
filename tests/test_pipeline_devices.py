"""Every stage of the pipeline runs on the accelerator's device, and every detector that runs a model is
handed the accelerator (so its per-image work is split across processes and put on that device).

CI has no GPU, so the device is the CPU here; what the test pins down is the wiring: each model forward
of each stage is recorded with the devices of its weights and inputs, and each detector call with the
arguments it received. A stage that forgot the device would leave a detector at its ``"cpu"`` default,
which the argument check sees even on a CPU."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "sslguard" / "configs" / "detect" / "quickstart.yaml"
SSL = ["poisoncam", "patchsearch", "density"]
CLASSIFIER = ["activation_clustering", "spectral", "critical_layer", "heatmap_clustering"]


def test_registered_detectors_that_run_a_model_take_the_accelerator():
    from sslguard.detectors import detector_spec, get_detector, list_detectors

    runs_model = []
    for name in list_detectors():
        params = inspect.signature(get_detector(name)).parameters
        if {"backbone", "model"} & set(params):
            runs_model.append(name)
            assert "accelerator" in params, f"{name} runs a model but cannot take the accelerator"
        assert detector_spec(name).stage in ("ssl", "classifier")
    assert set(runs_model) >= {"poisoncam", "patchsearch", *CLASSIFIER}


def test_every_stage_runs_on_the_accelerators_device(tmp_path, monkeypatch):
    import pytest
    from accelerate import Accelerator

    pytest.importorskip("zennit")
    import sslguard.pipeline.stages as stages
    from sslguard.pipeline import load_detect_config

    acc = Accelerator(cpu=True)
    dev = acc.device
    cfg = load_detect_config(CFG, [
        "data.subset_per_class=20", "cluster.k=5", "ssl.epochs=1", "ssl.width=4", "ssl.batch_size=64",
        f"detectors.ssl=[{','.join(SSL)}]", f"detectors.classifier=[{','.join(CLASSIFIER)}]", "fusion.detectors=null",
        "classifier.epochs=1", "classifier.width=4", "report.top_k=4", "retrain.enabled=true",
        f"output_dir={tmp_path}", "name=dev"])
    pipe = stages.Pipeline(cfg, quiet=True, accelerator=acc)

    forwards: dict[str, set[str]] = {}

    def hook(module, args):
        stage = pipe.rd.current or "report"  # the report draws outside the stamped stages
        devs = {str(p.device) for p in module.parameters(recurse=False)}
        devs |= {str(a.device) for a in args if isinstance(a, torch.Tensor)}
        forwards.setdefault(stage, set()).update(devs)

    calls: dict[str, dict] = {}
    real_call = stages.call_with_supported

    def spy(fn, available, params):
        calls[getattr(fn, "name", fn.__name__)] = {"available": available,
                                                   "accepts": set(inspect.signature(fn).parameters)}
        return real_call(fn, available, params)

    monkeypatch.setattr(stages, "call_with_supported", spy)
    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        result = pipe.run()
    finally:
        handle.remove()
    assert result is not None

    # every model-running stage ran forwards, all of them on the accelerator's device
    expected = {"encoder", "embed", "detector:poisoncam", "detector:patchsearch", "classifier", "backdoor", "retrain",
                "retrain_eval", "report", *(f"detector:{n}" for n in CLASSIFIER)}
    assert expected <= set(forwards), sorted(expected - set(forwards))
    for stage, devs in forwards.items():
        assert devs <= {str(dev)}, (stage, devs)
    # every detector was called, and got the accelerator and its device when it can take them
    assert set(calls) == set(SSL + CLASSIFIER)
    for name, c in calls.items():
        for arg in ("accelerator", "device"):
            if arg in c["accepts"]:
                assert c["available"][arg] is (acc if arg == "accelerator" else dev), (name, arg)
        if {"backbone", "model"} & c["accepts"]:
            assert "accelerator" in c["accepts"], name
