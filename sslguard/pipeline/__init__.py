"""One run that sanitises a corpus: data -> encoder -> embeddings -> clusters -> detectors -> fused
flags -> clean manifest -> metrics -> report, every stage cached in ``runs/<name>/``.

Stages and their artefacts (all written atomically with :mod:`sslguard.utils.io`):

==============  ===========================================================================
data            ``dataset.json`` (keys, labels, paths, skipped files), ``manifest.csv/json``
                (ground truth, when an attack is injected; ``manifest_extra.*`` for ``extra_attack``)
encoder         ``encoder.safetensors`` (trained here, or ``encoder=`` a file given)
embed           ``embeddings.npy`` (N, D, L2-normalised) + ``embeddings_index.npy`` (N keys)
cluster         ``clusters.npz`` (FAISS k-means: assignments, centroids, ...)
detector:<n>    ``detectors/<n>.json`` + ``.csv``: one :class:`DetectionResult` per detector
classifier      ``classifier.safetensors`` + ``classifier.json`` (clean accuracy, ASR)
backdoor        ``backdoor.json``: kNN target rate of triggered vs random-patch test images
fuse            ``scores.csv`` (index, path, label, one column per detector, fused, flagged,
                [poisoned]), ``flagged.txt``, ``clean_indices.txt``, ``clean_manifest.txt``
retrain         ``encoder_clean.safetensors`` + ``retrain.json`` (optional)
report          ``summary.json``, ``report.html``, ``figures/*.png``
==============  ===========================================================================

Modules: :mod:`~sslguard.pipeline.data` (the corpus and its attacks), :mod:`~sslguard.pipeline.encoder`
(the one path from ``SSLConfig`` to an encoder), :mod:`~sslguard.pipeline.fusion`,
:mod:`~sslguard.pipeline.gallery` (the report's Grad-CAM evidence), :mod:`~sslguard.pipeline.stages`
(:class:`Pipeline`), :mod:`~sslguard.pipeline.api` (:func:`detect`); the run folder's caching is
:mod:`sslguard.utils.rundir`.

**Caching.** Each stage has a *fingerprint*: a hash of the configuration parts it depends on and
of its upstream stages' fingerprints (the data stage also hashes the corpus: keys, labels and each
file's path, size and mtime). After a stage's artefacts are written, a stamp
``.stages/<stage>.json`` records the fingerprint and each artefact's size and SHA-256; a stage is
skipped when its stamp matches and every artefact is intact. A killed run therefore resumes at the
first stage without a valid stamp, and because every stage seeds itself from ``seed`` and hands
downstream what it reads back from disk, a resumed run writes the same bytes as an uninterrupted one.
SSL training resumes mid-stage too (epoch checkpoints of :func:`sslguard.train.ssl.train_ssl`).

**Fusion.** Each detector's scores are put on a common scale, then combined:
``fusion.method="rank_mean"`` (default) averages per-detector percentile ranks (scale-free, robust to
one detector's outliers); ``"max_norm"`` takes the maximum of min-max-normalised scores (one confident
detector is enough); either over the detectors that flagged anything, when one did (one that found no
evidence would pull the ranking toward chance). Which images are *flagged* (and left out of the clean manifest) is
``fusion.flag``: ``"agree"`` (default: within a stage, the images two of its detectors flag, or the one
detector's that flagged anything; the stages add up: :mod:`~sslguard.pipeline.fusion`), ``"any"`` (the
union), ``"majority"``, ``"all"``, or ``"fused"`` (fused score above its ``fusion.fused_quantile``).

**Source data are read-only.** The run only reads the input corpus; it writes lists of indices and
paths, never a file under the data root.

Limits: detectors of the classifier stage need labels and are skipped (with a notice) on an
unlabeled corpus; the backdoor check and the before/after numbers of retraining need an attack (to
build triggered test images) and a labeled test split. The SSL encoder is trained (or loaded) even when
``detectors.ssl`` is empty, because the embedding map and the backdoor check use it. ``clean_manifest.txt``
(paths) exists only for corpora made of files; for in-memory corpora (digits, CIFAR-10 arrays)
``clean_indices.txt`` is the list to retrain on.

Devices and processes: every stage runs on the accelerator's device (a GPU when there is one, also for a
single process). Under ``accelerate launch`` / ``torchrun`` SSL training is data-parallel; the embedding,
the SSL detectors' per-image work and the classifier-stage detectors' passes are split by batch across the
processes and gathered (:func:`sslguard.utils.dist.map_chunks`); clustering and, unless
``classifier.data_parallel``, the classifier's training run on one process while the others wait; the
backdoor check, fusion and the report run on the main process. With a fixed encoder the outputs are the
same at any process count (``tests/robustness/test_multiproc.py``).
"""
from sslguard.pipeline.api import detect, load_detect_config, run_pipeline
from sslguard.pipeline.data import DataBundle, data_fingerprint, load_data, unpoisoned
from sslguard.pipeline.fusion import fuse, normalised_scores
from sslguard.pipeline.result import RunResult
from sslguard.pipeline.stages import Pipeline, call_with_supported
from sslguard.utils.rundir import KILL_ENV, RunDir, fingerprint

__all__ = [
    "KILL_ENV", "DataBundle", "Pipeline", "RunDir", "RunResult", "call_with_supported", "data_fingerprint", "detect",
    "fingerprint", "fuse", "load_data", "load_detect_config", "normalised_scores", "run_pipeline", "unpoisoned",
]
