"""Benchmarks behind the project's defaults and documented numbers, one subcommand each.

    python scripts/benchmark.py ssl --minutes 10 --n-train 10000
    python scripts/benchmark.py ssl --minutes 1 --n-train 2000 --output benchmarks/ssl_quick.md
    python scripts/benchmark.py repair --config benchmarks/configs/repair_cifar10.yaml --threads 1
    python scripts/benchmark.py detect --config benchmarks/configs/cifar10_detect.yaml --threads 1
    python scripts/benchmark.py generalization --cases quickstart planted   # benchmarks/generalization.md
    python scripts/benchmark.py gpu-pack                       # then, on the lent GPU (benchmarks/encoders/README.md):
    python scripts/benchmark.py gpu-encoder --output $OUT --budget-s 400

To add a benchmark: write ``add_<name>(subparsers)`` that adds a parser and sets ``func`` to a
function taking the parsed args (it calls the benchmark code in the ``benchmarks`` package beside the
results), and list it in ``SUBCOMMANDS``. Run it from anywhere: it puts the repository root on
``sys.path`` so that ``benchmarks`` imports (``sslguard`` is the installed package).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _run_ssl(args: argparse.Namespace) -> int:
    from benchmarks.ssl_training import run_ssl_benchmark

    res = run_ssl_benchmark(
        minutes=args.minutes, n_train=args.n_train, batch_size=args.batch_size, backbones=args.backbones,
        throughput_steps=args.throughput_steps, threads=args.threads, attack=None if args.attack == "none" else args.attack,
        attack_params=json.loads(args.attack_params) if args.attack_params else None, target=args.target,
        poison_rate=args.poison_rate, knn_k=args.knn_k, n_backdoor_test=args.n_backdoor_test, seed=args.seed,
        cifar_root=args.cifar_root, output=args.output, work_dir=args.work_dir, progress=args.progress,
        argv=" ".join(sys.argv[2:]),
    )
    for row in res["throughput"]:
        print(f"{row['backbone']:>20}: {row['images_per_s']:.0f} img/s ({row['threads']} threads)")
    for name, e in res["encoders"].items():
        b = e.get("backdoor") or {}
        print(f"{name} encoder: {e['epochs']} epochs, {e['train_seconds']:.0f} s, kNN top-1 {e['knn_top1']:.4f}, "
              f"target rate trigger {b.get('triggered')}, random patch {b.get('random_patch')}, clean {b.get('clean')}")
    print(f"backdoor learned: {res['backdoor_verdict']}; table: {args.output}")
    return 0


def add_ssl(sub) -> None:
    p = sub.add_parser("ssl", help="SimCLR on CIFAR-10: throughput per backbone, kNN top-1, backdoor learned?")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget for both encoders together")
    p.add_argument("--n-train", type=int, default=10000, help="CIFAR-10 training images (per-class subset)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--backbones", nargs="+", default=["convnet4:32", "cifar_resnet18:32", "cifar_resnet18:64"],
                   help="name[:width] for the throughput table")
    p.add_argument("--throughput-steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's); use 1 on a shared machine, where more threads contend")
    p.add_argument("--attack", default="htba", help="attack for the poisoned encoder, or none")
    p.add_argument("--attack-params", default=None, help='JSON, e.g. \'{"trigger_size": 12}\'')
    p.add_argument("--target", type=int, default=0)
    p.add_argument("--poison-rate", type=float, default=0.5, help="fraction of the target class poisoned")
    p.add_argument("--knn-k", type=int, default=200)
    p.add_argument("--n-backdoor-test", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cifar-root", default=None)
    p.add_argument("--output", default="benchmarks/ssl.md")
    p.add_argument("--work-dir", default=None, help="keep checkpoints here (resumable); default: a temp folder")
    p.add_argument("--progress", action="store_true")
    p.set_defaults(func=_run_ssl)


def _run_classifier(args: argparse.Namespace) -> int:
    from benchmarks.classifier import run_classifier_benchmark

    res = run_classifier_benchmark(
        scenarios=args.scenarios, n_per_class=args.n_per_class, n_eval_per_class=args.n_eval_per_class,
        n_benign_per_class=args.n_benign_per_class, backbone=args.backbone, width=args.width, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, rate=args.rate, rate_of=args.rate_of, target=args.target,
        trigger_fraction=args.trigger_fraction, lc_rate=args.lc_rate, lc_amplitude=args.lc_amplitude, lc_epsilon=args.lc_epsilon, art=not args.no_art,
        threads=args.threads, seed=args.seed, cifar_root=args.cifar_root, output=args.output, work_dir=args.work_dir,
        progress=args.progress, argv=" ".join(sys.argv[1:]),
    )
    for sc in res["scenarios"]:
        print(f"{sc['scenario']}: clean acc {sc['model']['clean_acc']:.3f}, ASR {sc['model']['asr']:.3f}")
        for name, r in sc["rows"].items():
            print(f"  {name:>45}: F1 {r['f1']:.3f} AUROC {r['auroc']:.3f} ({r['seconds']:.1f} s)")
    print(f"table: {args.output}")
    return 0


def add_classifier(sub) -> None:
    p = sub.add_parser("classifier", help="classifier-stage detectors vs ART on poisoned CIFAR-10, l-inf pruning curve")
    p.add_argument("--scenarios", nargs="+", default=["badnets", "label_consistent"], choices=["badnets", "label_consistent"])
    p.add_argument("--n-per-class", type=int, default=500, help="CIFAR-10 training images per class")
    p.add_argument("--n-eval-per-class", type=int, default=200, help="test images per class for accuracy and ASR")
    p.add_argument("--n-benign-per-class", type=int, default=20, help="trusted benign images per class (critical layer, pruning)")
    p.add_argument("--backbone", default="convnet4")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--rate", type=float, default=0.1, help="badnets poison rate")
    p.add_argument("--rate-of", default="dataset", choices=["dataset", "target"])
    p.add_argument("--target", type=int, default=0)
    p.add_argument("--trigger-fraction", type=float, default=0.15, help="badnets patch side / image side")
    p.add_argument("--lc-rate", type=float, default=0.5, help="label-consistent: fraction of the target class poisoned")
    p.add_argument("--lc-amplitude", type=float, default=64.0, help="label-consistent sticker amplitude (0-255)")
    p.add_argument("--lc-epsilon", type=float, default=8.0, help="label-consistent PGD radius (0-255)")
    p.add_argument("--no-art", action="store_true", help="skip ART's defences")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cifar-root", default=None)
    p.add_argument("--output", default="benchmarks/classifier.md")
    p.add_argument("--work-dir", default=None, help="keep trained models here; a rerun with the same settings reuses them")
    p.add_argument("--progress", action="store_true")
    p.set_defaults(func=_run_classifier)


def _run_repair(args: argparse.Namespace) -> int:
    import torch

    from benchmarks.repair import RepairConfig, run_repair_benchmark
    from sslguard.config import load_config

    cfg = load_config(RepairConfig, args.config, args.overrides)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    paths = run_repair_benchmark(cfg, cfg.output_dir, command="python scripts/benchmark.py " + " ".join(sys.argv[1:]),
                                 progress=args.progress)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def add_repair(sub) -> None:
    p = sub.add_parser("repair", help="trigger persistence per regulariser; clean fine-tuning vs l-inf pruning")
    p.add_argument("--config", default=None, help="YAML (benchmarks.repair.RepairConfig), e.g. benchmarks/configs/repair_cifar10.yaml")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's); use 1 on a shared machine, where more threads contend")
    p.add_argument("--progress", action="store_true")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. epochs=3 sections=[repair]")
    p.set_defaults(func=_run_repair)


def _run_detect(args: argparse.Namespace) -> int:
    import torch

    from benchmarks.detect import BenchConfig, run_detect_benchmark
    from sslguard.config import load_config

    cfg = load_config(BenchConfig, args.config, args.overrides)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"table: {run_detect_benchmark(cfg)}")
    return 0


def add_detect(sub) -> None:
    p = sub.add_parser("detect", help="PoisonCAM vs PatchSearch on poisoned CIFAR-10 (SSL encoder), time and memory")
    p.add_argument("--config", default=None, help="YAML (benchmarks.detect.BenchConfig), e.g. benchmarks/configs/cifar10_detect.yaml")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's); use 1 on a shared machine, where more threads contend")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. settings=[htba12_50] scale=false")
    p.set_defaults(func=_run_detect)


def _run_gpu_pack(args: argparse.Namespace) -> int:
    from benchmarks.gpu import pack_cifar10

    path = pack_cifar10(args.output, root=args.cifar_root, n_test=args.n_test, seed=args.seed)
    print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB")
    return 0


def add_gpu_pack(sub) -> None:
    p = sub.add_parser("gpu-pack", help="CIFAR-10's JPEG bytes in one .npz small enough to carry to the device")
    p.add_argument("--output", default=".devdata/cifar10_pack.npz")
    p.add_argument("--n-test", type=int, default=2000, help="test images to carry (a seeded sample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cifar-root", default=None)
    p.set_defaults(func=_run_gpu_pack)


def _run_gpu_encoder(args: argparse.Namespace) -> int:
    from benchmarks.gpu import train_reference_encoder

    rep = train_reference_encoder(args.pack, args.output, setting=args.setting, method=args.method,
                                  backbone=args.backbone, width=args.width, batch_size=args.batch_size,
                                  budget_s=args.budget_s, hard_limit_s=args.hard_limit_s, max_epochs=args.max_epochs,
                                  min_scale=args.min_scale, mixed_precision=args.mixed_precision,
                                  channels_last=not args.no_channels_last, seed=args.seed, name=args.name,
                                  probe_steps=args.probe_steps, work_dir=args.work_dir, epochs=args.epochs,
                                  compile=args.compile)
    print(json.dumps({k: v for k, v in rep.items() if k != "attack"}, indent=1, default=str))
    return 0


def add_gpu_encoder(sub) -> None:
    p = sub.add_parser("gpu-encoder", help="train a backdoored reference encoder for a time budget (on the lent GPU)")
    p.add_argument("--pack", default=".devdata/cifar10_pack.npz", help="file written by gpu-pack")
    p.add_argument("--output", required=True, help="folder for the encoder, its parts and its JSON")
    p.add_argument("--setting", default="htba_50", help="a setting of benchmarks.detect.SETTINGS")
    p.add_argument("--method", default="byol", choices=["simclr", "byol"])
    p.add_argument("--backbone", default="cifar_resnet18")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--budget-s", type=float, default=300.0, help="training seconds to plan the epochs for")
    p.add_argument("--hard-limit-s", type=float, default=None, help="stop at the first epoch end past this (default 1.5x budget)")
    p.add_argument("--max-epochs", type=int, default=400)
    p.add_argument("--min-scale", type=float, default=0.2)
    p.add_argument("--mixed-precision", default="bf16", choices=["no", "bf16", "fp16"])
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None)
    p.add_argument("--probe-steps", type=int, default=30, help="batches in the timing probe that plans the epochs")
    p.add_argument("--work-dir", default=None, help="checkpoints and the whole encoder (default OUTPUT/work)")
    p.add_argument("--epochs", type=int, default=None,
                   help="train this many epochs (no probe; restarts with fewer if the first ones say they won't fit "
                        "the hard limit)")
    p.add_argument("--compile", action="store_true", help="torch.compile the step (ssl.compile)")
    p.set_defaults(func=_run_gpu_encoder)


def add_generalization(sub) -> None:
    p = sub.add_parser("generalization", add_help=False,
                       help="every SSL detector and the fused flags on every case (benchmarks/generalization.md)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the arguments of benchmarks/generalization.py (--help there)")
    p.set_defaults(func=None)  # main() hands "generalization" to benchmarks/generalization.py before parsing


SUBCOMMANDS = [add_ssl, add_classifier, add_repair, add_detect, add_generalization, add_gpu_pack, add_gpu_encoder]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["generalization"]:  # its own parser (argparse's REMAINDER drops leading options)
        from benchmarks.generalization import main as generalization_main

        return int(generalization_main(argv[1:]) or 0)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
