"""The detection pipeline end to end on tiny CPU configs: caching and resume after SIGKILL, read-only
sources, unlabeled folders, fusion."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sslguard
from sslguard.config import ConfigError
from sslguard.pipeline import KILL_ENV, fuse, load_detect_config, normalised_scores

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "detect.py"

# Small enough for a CPU test (~300 digits at 16 px, one SSL epoch), big enough that every stage runs.
TINY = [
    "data.name=digits", "data.subset_per_class=30", "data.image_size=16",
    "attack.name=htba", "attack.target=0", "attack.rate=0.5", "attack.params.size_fraction=0.25",
    "ssl.epochs=1", "ssl.batch_size=64", "ssl.width=8", "cluster.k=5",
    "detectors.ssl=[poisoncam]", "detectors.classifier=[activation_clustering]",
    "classifier.epochs=1", "classifier.width=8", "report.top_k=6",
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop(KILL_ENV, None)
    return env


def _detect_subprocess(config: Path, args: list[str], kill_after: str | None = None) -> subprocess.CompletedProcess:
    env = _env()
    if kill_after is not None:
        env[KILL_ENV] = kill_after
    return subprocess.run([sys.executable, str(SCRIPT), "--quiet", "--config", str(config), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def _tree_hashes(root: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


def _write_digit_folder(root: Path, labeled: bool, per_class: int = 8) -> None:
    from sslguard.data import load_digits_dataset

    ds = load_digits_dataset("all", size=16)
    for c in range(10):
        for j, pos in enumerate(np.flatnonzero(ds.labels == c)[:per_class]):
            d = root / str(c) if labeled else root
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ds.images[pos]).save(d / f"{c}_{j}.png")


def test_killed_run_resumes_with_identical_scores(tmp_path):
    """SIGKILL after the embed stage, then in the middle of the detect stage; the resumed run reuses
    every committed stage and writes the same scores.csv bytes as an uninterrupted run."""
    full = sslguard.detect(overrides=TINY + [f"output_dir={tmp_path / 'full'}", "name=r"], quiet=True)
    reference = (full.run_dir / "scores.csv").read_bytes()

    args = TINY + [f"output_dir={tmp_path / 'killed'}", "name=r"]
    run_dir = tmp_path / "killed" / "r"
    base = tmp_path / "base.yaml"  # the defaults, as the in-process run above used
    base.write_text("seed: 0\n")
    first = _detect_subprocess(base, args, kill_after="embed")
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert (run_dir / "embeddings.npy").exists() and not (run_dir / "clusters.npz").exists()

    second = _detect_subprocess(base, args, kill_after="detector:poisoncam")
    assert second.returncode == -signal.SIGKILL, second.stderr[-2000:]
    assert (run_dir / "detectors" / "poisoncam.json").exists() and not (run_dir / "scores.csv").exists()

    resumed = sslguard.detect(overrides=args, quiet=True)
    cached = set(resumed.cached_stages)
    assert {"data", "encoder", "embed", "cluster", "detector:poisoncam"} <= cached
    assert "classifier" not in cached and "fuse" not in cached
    assert (run_dir / "scores.csv").read_bytes() == reference

    again = sslguard.detect(overrides=args, quiet=True)  # a finished run is reused whole
    assert {"fuse", "report", "detector:activation_clustering"} <= set(again.cached_stages)
    assert (run_dir / "scores.csv").read_bytes() == reference


def test_config_change_invalidates_only_downstream_stages_and_retrain(tmp_path):
    args = TINY + [f"output_dir={tmp_path}", "name=r", "detectors.classifier=[]"]
    first = sslguard.detect(overrides=args, quiet=True)
    changed = sslguard.detect(overrides=args + ["detectors.params.poisoncam.z=2.0", "retrain.enabled=true"], quiet=True)
    cached = set(changed.cached_stages)
    assert {"data", "encoder", "embed", "cluster"} <= cached
    assert "detector:poisoncam" not in cached and "retrain" not in cached
    assert first.detections["poisoncam"].threshold != changed.detections["poisoncam"].threshold
    # retraining on the clean manifest: a second encoder and the backdoor numbers before and after
    retrain = changed.summary["retrain"]
    assert (changed.run_dir / "encoder_clean.safetensors").is_file()
    # (an encoder this small learned no trigger, so nothing may be flagged: the manifest can be the whole set)
    assert retrain["n_train_after"] == len(changed.clean_indices) <= retrain["n_train_before"]
    for when in ("before", "after"):
        assert {"triggered", "random_patch", "clean", "knn_accuracy"} <= set(retrain[when])
        assert 0.0 <= retrain[when]["knn_accuracy"] <= 1.0
    assert 'id="backdoor"' in changed.report_path.read_text()


def test_source_folder_is_never_modified(tmp_path):
    src = tmp_path / "src"
    _write_digit_folder(src, labeled=True)
    (src / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    before = _tree_hashes(src)
    result = sslguard.detect(overrides=TINY + [f"output_dir={tmp_path / 'runs'}", "name=folder", "data.name=imagefolder",
                                               f"data.root={src}", "data.subset_per_class=null", "data.test_split=null",
                                               "attack.rate=0.5"], quiet=True)
    assert _tree_hashes(src) == before
    # the unreadable file is listed with its reason, in the summary and the report
    assert result.summary["n_skipped_files"] == 1
    assert "broken.png" in result.report_path.read_text()
    # the clean manifest names files under the source root that a loader can read back
    from sslguard.sanitize import read_file_list, read_index_list

    files = read_file_list(result.paths["clean_manifest.txt"])
    kept = read_index_list(result.paths["clean_indices.txt"])
    assert len(files) == len(kept) == len(result.clean_indices)
    assert all(f.exists() and src.resolve() in f.parents for f in files)


def test_output_inside_source_folder_is_refused(tmp_path):
    src = tmp_path / "src"
    _write_digit_folder(src, labeled=True, per_class=2)
    with pytest.raises(ConfigError, match="^output_dir"):
        load_detect_config(None, ["data.name=imagefolder", f"data.root={src}", f"output_dir={src / 'runs'}"])


def test_unlabeled_flat_folder_without_ground_truth(tmp_path):
    src = tmp_path / "flat"
    _write_digit_folder(src, labeled=False)
    result = sslguard.detect(overrides=TINY + [f"output_dir={tmp_path / 'runs'}", "name=flat", "data.name=imagefolder",
                                               f"data.root={src}", "data.subset_per_class=null", "data.test_split=null",
                                               "attack=null"], quiet=True)
    d = result.run_dir
    for name in ("scores.csv", "flagged.txt", "clean_indices.txt", "clean_manifest.txt", "summary.json", "report.html"):
        assert (d / name).is_file(), name
    header = (d / "scores.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["index", "path", "label"] and "poisoned" not in header
    assert result.metrics == {} and result.summary["metrics"] == {}
    assert list(result.detections) == ["poisoncam"]  # the classifier stage needs labels
    assert any("no labels" in n["text"] for n in result.summary["notices"])
    n_kept = len((d / "clean_indices.txt").read_text().split())
    assert n_kept + len(result.flagged_indices) == len(result.index) == 80


def test_fusion_rules():
    from sslguard.detectors.base import DetectionResult

    idx = np.arange(6)
    a = DetectionResult("a", idx, [0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 1, 1], 3.5)
    b = DetectionResult("b", idx, [5, 4, 3, 2, 1, -np.inf], [1, 0, 0, 0, 0, 0], 4.5)
    assert fuse([a, b], flag="any").flagged.tolist() == [1, 0, 0, 0, 1, 1]
    assert fuse([a, b], flag="all").flagged.sum() == 0
    assert fuse([a, b], flag="majority").flagged.sum() == 0  # one vote of two is not a majority
    assert fuse([a], flag="majority").flagged.tolist() == a.flagged.tolist()
    ranks = normalised_scores(b.scores, "rank_mean")
    assert ranks[5] == 0.0 and ranks[0] == 1.0  # -inf ranks lowest
    top = fuse([a, a], method="max_norm", flag="fused", fused_quantile=0.5)
    assert top.flagged.tolist() == [0, 0, 0, 1, 1, 1]


def test_the_fused_ranking_leaves_out_a_detector_that_found_nothing():
    """PoisonCAM flags the poisons, PatchSearch flags nothing and ranks them last (its windows do not apply):
    the fused ranking is PoisonCAM's, not a mean pulled to chance; with no flags anywhere both rank."""
    from sklearn.metrics import roc_auc_score

    from sslguard.detectors.base import DetectionResult

    rng = np.random.default_rng(0)
    truth = np.zeros(40, bool)
    truth[:8] = True
    idx = np.arange(40)
    pc = DetectionResult("poisoncam", idx, truth + rng.uniform(0, 0.5, 40), truth, 0.5)
    ps = DetectionResult("patchsearch", idx, (~truth) + rng.uniform(0, 0.5, 40), np.zeros(40, bool), 2.0)
    fused = fuse([pc, ps], flag="agree", groups={"poisoncam": "ssl", "patchsearch": "ssl"})
    assert fused.info["ranked"] == ["poisoncam"] and fused.flagged.tolist() == truth.tolist()
    assert roc_auc_score(truth, fused.scores) == 1.0
    not_voting = fuse([pc, ps], flag="any", no_vote=["poisoncam"])
    assert not_voting.info["ranked"] == ["poisoncam"]  # an implausible detector still ranks with its flags
    quiet = DetectionResult("poisoncam", idx, pc.scores, np.zeros(40, bool), 2.0)
    mean = fuse([quiet, ps])
    assert mean.info["ranked"] == ["poisoncam", "patchsearch"] and roc_auc_score(truth, mean.scores) < 0.9


def test_agree_intersects_within_a_stage_and_adds_up_across_stages():
    """Two SSL detectors that both found evidence: only the images both flag; one that found nothing does not
    veto the other; a classifier-stage detector hunts another attack, so its flags are added."""
    from sslguard.detectors.base import DetectionResult

    idx = np.arange(8)
    pc = DetectionResult("poisoncam", idx, np.zeros(8), [1, 1, 1, 0, 0, 0, 0, 0], 0.5)
    ps = DetectionResult("patchsearch", idx, np.zeros(8), [1, 1, 0, 1, 0, 0, 0, 0], 0.5)
    none = DetectionResult("patchsearch", idx, np.zeros(8), [0] * 8, 0.5)
    ac = DetectionResult("activation_clustering", idx, np.zeros(8), [0, 0, 0, 0, 0, 0, 1, 1], 0.5)
    stages = {"poisoncam": "ssl", "patchsearch": "ssl", "activation_clustering": "classifier"}
    assert fuse([pc, ps], flag="agree", groups=stages).flagged.tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert fuse([pc, none], flag="agree", groups=stages).flagged.tolist() == pc.flagged.tolist()
    assert fuse([pc, ps, ac], flag="agree", groups=stages).flagged.tolist() == [1, 1, 0, 0, 0, 0, 1, 1]
    assert fuse([pc, ps], flag="agree").flagged.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]  # no stages: each its own
    assert fuse([pc, ps], flag="agree", groups=stages, no_vote=["patchsearch"]).flagged.tolist() == pc.flagged.tolist()


def test_agree_needs_two_votes_within_a_stage_not_every_detector():
    """Four classifier-stage detectors: an image two of them flag is kept although a budget-capped detector
    (flags only part) and one that flags a clean class alone disagree; the lone class is dropped."""
    from sslguard.detectors.base import DetectionResult

    idx = np.arange(10)
    poisons = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    ac = DetectionResult("activation_clustering", idx, np.zeros(10), poisons, 0.5)
    hc = DetectionResult("heatmap_clustering", idx, np.zeros(10), [1, 1, 1, 1, 0, 0, 0, 0, 1, 1], 0.5)  # + a clean class
    sp = DetectionResult("spectral", idx, np.zeros(10), [1, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0.5)  # its budget: one
    cl = DetectionResult("critical_layer", idx, np.zeros(10), [0] * 10, 0.5)  # found nothing: no vote
    stages = {r.name: "classifier" for r in (ac, hc, sp, cl)}
    assert fuse([ac, hc, sp, cl], flag="agree", groups=stages).flagged.tolist() == poisons
    assert fuse([hc, cl], flag="agree", groups=stages).flagged.tolist() == hc.flagged.tolist()  # the lone voter
    assert fuse([ac, hc, sp, cl], flag="agree", groups=stages, no_vote=["activation_clustering"]).flagged.tolist() \
        == [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]  # HC and SP agree on one image only


def test_agree_class_vote_keeps_a_whole_poison_cluster_where_another_detector_confirms_the_class():
    """Activation clustering flags the whole poison cluster of class 0; spectral signatures (a budget) and
    critical layer (a cut) flag parts of it: the class vote keeps the whole cluster; the same detector's
    cluster in class 1, which no other detector flags, is dropped; an image-level detector gets no class vote."""
    from sslguard.detectors.base import DetectionResult

    idx = np.arange(12)
    labels = np.array([0] * 6 + [1] * 6)
    ac = DetectionResult("activation_clustering", idx, np.zeros(12), [1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1], 0.5)
    sp = DetectionResult("spectral", idx, np.zeros(12), [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0.5)
    cl = DetectionResult("critical_layer", idx, np.zeros(12), [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0.5)
    stages = {r.name: "classifier" for r in (ac, sp, cl)}
    kw = dict(flag="agree", groups=stages, labels=labels)
    assert fuse([ac, sp, cl], by_cluster=["activation_clustering"], **kw).flagged.tolist() == \
        [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert fuse([ac, sp, cl], **kw).flagged.tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]  # two votes alone
    assert fuse([ac, sp, cl], by_cluster=["spectral"], **kw).flagged.tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    unlabelled = fuse([ac, sp, cl], flag="agree", groups=stages, by_cluster=["activation_clustering"])
    assert unlabelled.flagged.tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]  # no labels: no class vote


def test_python_api_accepts_sections_and_reports_errors_by_key(tmp_path):
    cfg = load_detect_config(ROOT / "sslguard" / "configs" / "detect" / "quickstart.yaml", ["ssl.epochs=2"], name="api", attack=None,
                             extra_attack=None, data={"subset_per_class": 5})
    assert cfg.name == "api" and cfg.attack is None and cfg.ssl.epochs == 2
    assert cfg.data.subset_per_class == 5 and cfg.data.name == "digits"  # sections merge into the file's
    with pytest.raises(ConfigError, match=r"^extra_attack"):
        load_detect_config(ROOT / "sslguard" / "configs" / "detect" / "quickstart.yaml", attack=None)
    with pytest.raises(ConfigError, match=r"^fusion\.flag"):
        load_detect_config(None, ["fusion.flag=sometimes"])
    with pytest.raises(ConfigError, match=r"^detectors\.params\.poisoncam\.nonsense"):
        load_detect_config(None, ["detectors.ssl=[poisoncam]", "detectors.params.poisoncam.nonsense=1"])


def test_package_import_is_light():
    """``import sslguard`` loads neither torch nor matplotlib; the public names load on first use."""
    code = ("import sys, sslguard; heavy = [m for m in ('torch', 'matplotlib', 'faiss', 'sklearn') if m in sys.modules]; "
            "print(heavy); assert not heavy; assert callable(sslguard.detect) and sslguard.DetectConfig")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_backdoor_check_without_a_test_split_holds_out_clean_corpus_images(tmp_path):
    """No labelled test split (an image folder, say): the learned-or-not check still runs, on clean corpus
    images outside the target class held out of the kNN bank, and says so."""
    from sslguard.pipeline import Pipeline
    from sslguard.pipeline.data import held_out_bank

    cfg = load_detect_config(ROOT / "sslguard" / "configs" / "detect" / "quickstart.yaml", ["ssl.epochs=1", "data.test_split=null"],
                             name="noheldout", output_dir=str(tmp_path), extra_attack=None,
                             detectors={"ssl": ["density"], "classifier": []}, fusion={"detectors": None})
    p = Pipeline(cfg, quiet=True)
    data = p.stage_data()
    assert data.test is None and p.backdoor_possible(data)
    bank, test = held_out_bank(data, cfg.seed)
    assert len(bank) + len(test) == len(data.train)
    assert not set(test.keys.tolist()) & set(bank.keys.tolist())
    assert not data.truth[np.isin(data.keys, test.keys)].any()
    assert (np.asarray(test.labels) != cfg.attack.target).all()
    out = p.stage_backdoor(data, p.stage_encoder(data))
    assert out["before"] is not None and "held out" in out["before"]["test_images"], out
    assert 0.0 <= out["before"]["triggered_corpus_bank"] <= 1.0  # the corpus (its poisons too) as the bank


def test_backdoor_notice_tells_a_trigger_tied_to_the_poisons_from_one_not_learned(tmp_path):
    """A BYOL encoder can gather triggered images in a group of their own: with clean references they go
    nowhere in particular, with the corpus as the bank they land among the poisons. The run must not tell
    the user that the SSL detectors will miss them (on CIFAR-10 they found them, F1 0.99)."""
    from sslguard.pipeline import Pipeline

    cfg = load_detect_config(ROOT / "sslguard" / "configs" / "detect" / "quickstart.yaml", [], name="notice",
                             output_dir=str(tmp_path))
    rates = {"triggered": 0.11, "random_patch": 0.07, "clean": 0.06}
    texts = {}
    for case, corpus_bank in {"tied": (0.95, 0.30, 0.05), "not": (0.12, 0.08, 0.06), "old": None}.items():
        p = Pipeline(cfg, quiet=True)
        before = dict(rates) if corpus_bank is None else {
            **rates, **dict(zip(("triggered_corpus_bank", "random_patch_corpus_bank", "clean_corpus_bank"), corpus_bank))}
        p._backdoor_notice({"before": before})
        texts[case] = p.notices
    assert texts["tied"][0][0] == "info" and "tied the trigger to the poisons" in texts["tied"][0][1]
    assert "a patch like it" in texts["tied"][0][1]  # a random patch lands among the poisons too (0.30 vs 0.05)
    assert texts["not"][0][0] == "warn" and "did NOT learn" in texts["not"][0][1]
    assert texts["old"] == texts["not"]  # a backdoor.json written before the corpus-bank rates: as before


def test_ssl_preload_auto_keeps_small_corpora_on_a_gpu_only():
    from sslguard.config import SSLConfig
    from sslguard.pipeline.encoder import PRELOAD_AUTO_BYTES, resolve_preload

    corpus = list(range(1000))  # resolve_preload needs only the corpus' length
    auto = SSLConfig()
    assert auto.preload == "auto"
    assert resolve_preload(auto, corpus, 32, "cuda") and not resolve_preload(auto, corpus, 32, "cpu")
    side = int((PRELOAD_AUTO_BYTES / (3 * len(corpus))) ** 0.5) + 1  # just over the limit
    assert not resolve_preload(auto, corpus, side, "cuda")
    assert resolve_preload(SSLConfig(preload=True), corpus, 32, "cpu")
    assert not resolve_preload(SSLConfig(preload=False), corpus, 32, "cuda")
    with pytest.raises(ConfigError, match=r"^ssl\.preload"):
        load_detect_config(None, ["ssl.preload=sometimes"])
