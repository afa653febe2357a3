"""Benchmarks: reproducible measurements behind the defaults and the numbers in the docs.

They sit beside the results they write (``benchmarks/*.md``, ``*.json``) and their configs
(``benchmarks/configs``), on top of the product: they import anything from :mod:`sslguard`, and nothing
in :mod:`sslguard` imports them. Encoders are trained through :func:`sslguard.pipeline.encoder.train_encoder`
and attacks built through :class:`sslguard.config.AttackConfig`, so a benchmark measures what users get.

- :mod:`benchmarks.detect`: SSL-stage detection on poisoned CIFAR-10 (``scripts/benchmark.py detect``);
- :mod:`benchmarks.classifier`: classifier-stage detectors vs ART (``classifier``);
- :mod:`benchmarks.repair`: trigger persistence and clean fine-tuning vs pruning (``repair``);
- :mod:`benchmarks.ssl_training`: SSL pretraining throughput, kNN accuracy, backdoor learned? (``ssl``);
- :mod:`benchmarks.gpu`: the reference encoders trained on a lent GPU (``gpu-pack``, ``gpu-encoder``);
- :mod:`benchmarks.margins`: the margins behind the planted test cases (``python benchmarks/margins.py``).

Run them through ``python scripts/benchmark.py <section>`` from the repository root.
"""
