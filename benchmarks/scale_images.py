"""Image folders at scale: JPEG decoding + resizing throughput with loader workers, and one whole pipeline
run on Imagenette with its stage timings; both go into the *Image folders* section of ``benchmarks/scale.md``.

    python benchmarks/scale_images.py                          # ../shared/data/imagenette2-224 (its val split)
    python benchmarks/scale_images.py --skip-pipeline          # throughput only
    python benchmarks/scale_images.py --pipeline-args ssl.epochs=10 --out /tmp/scale.md

Throughput is measured the way every stage reads images (``sslguard.embed.extract``: the dataset's
``load_image`` + ``ResizeUint8`` in ``DataLoader`` workers, a trivial ``fn`` so only loading counts), over
the whole folder, once per (side, workers); the indexing pass (``ImageFolderDataset`` decodes each file once
to check it) is timed separately. The pipeline runs ``sslguard detect`` in a child process whose peak RSS (``VmHWM``, polled) is
its own; stage times come from the run folder's stage stamps (``.stages/*.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file: the checkout's sslguard, not another installed copy
    sys.path.insert(0, str(ROOT))

START, END = "<!-- images:start -->", "<!-- images:end -->"
DEFAULT_ROOT = ROOT.parent / "shared" / "data" / "imagenette2-224"
# The run below: the imagefolder config with a small encoder, so the whole run fits a CPU session; the
# default cifar_resnet18 x 100 epochs would spend hours on SSL training alone here.
PIPELINE_ARGS = ["data.split=val", "data.image_size=64", "data.num_workers=2", "ssl.backbone=convnet4",
                 "ssl.width=32", "ssl.epochs=20"]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _vm_hwm_mb(pid: int) -> float:
    """Peak resident memory (MiB) of a running process, from ``/proc/<pid>/status`` (0 when unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def throughput(root: Path, sides: list[int], workers: list[int], batch_size: int = 128) -> dict:
    """Images per second (and per core: the workers, or the main process when there are none) of loading
    and resizing every image of ``root``, per side and worker count."""
    import torch

    from sslguard.data.datasets import ImageFolderDataset
    from sslguard.embed import extract

    t0 = time.perf_counter()
    ds = ImageFolderDataset(root, progress=False)
    index_s = time.perf_counter() - t0
    rows = []
    for side in sides:
        for w in workers:
            t = time.perf_counter()
            keys, _ = extract(ds, lambda x: x.float().mean(dim=(1, 2, 3)), batch_size=batch_size, image_size=side,
                              num_workers=w, progress=False, device=torch.device("cpu"))
            dt = time.perf_counter() - t
            rate = len(keys) / dt
            rows.append({"side": side, "workers": w, "seconds": dt, "img_s": rate, "img_s_core": rate / max(1, w)})
            print(f"side {side:4d}  workers {w}  {rate:8.1f} img/s  {rate / max(1, w):8.1f} img/s/core", flush=True)
    return {"n": len(ds), "index_seconds": index_s, "rows": rows}


def pipeline_run(root: Path, extra: list[str], out_dir: Path) -> dict:
    """``sslguard detect --config detect_imagefolder`` on ``root`` in a child process; stage times and peak RSS."""
    args = [f"data.root={root}", *PIPELINE_ARGS, *extra, f"output_dir={out_dir}", "name=imagenette"]
    cmd = [sys.executable, "-m", "sslguard.cli", "detect", "--quiet", "--config", "detect_imagefolder", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "stdout.txt", "w+") as out, open(out_dir / "stderr.txt", "w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err, text=True)
        # the child's own high-water mark (VmHWM): ru_maxrss of a child keeps its parent's peak across exec
        rss_mb = 0.0
        while proc.poll() is None:
            rss_mb = max(rss_mb, _vm_hwm_mb(proc.pid))
            time.sleep(2)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"pipeline failed ({proc.returncode}):\n{stdout[-3000:]}\n{stderr[-3000:]}")
    run = out_dir / "imagenette"
    stages = {}
    for f in sorted((run / ".stages").glob("*.json")):
        rec = json.loads(f.read_text())
        stages[rec["stage"]] = rec["seconds"]
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
    flagged = sum(1 for _ in open(run / "flagged.txt")) if (run / "flagged.txt").exists() else None
    return {"args": args, "wall": wall, "peak_rss_mb": rss_mb, "stages": stages, "flagged": flagged,
            "n": summary.get("n_images"), "tail": stdout.strip().splitlines()[-12:]}


def render(tp: dict | None, run: dict | None, root: Path) -> str:
    lines = [START, "## Image folders (Imagenette)", "",
             f"`python benchmarks/scale_images.py` on `{root.name}` ({tp['n'] if tp else '?'} JPEGs, 224 px); "
             f"{_cpu()}, {os.cpu_count()} cores; torch threads {__import__('torch').get_num_threads()}.", ""]
    if tp:
        lines += [f"Indexing the folder (each file decoded once to check it): {tp['index_seconds']:.1f} s.", "",
                  "| side | loader workers | img/s | img/s per core |", "|---:|---:|---:|---:|"]
        lines += [f"| {r['side']} | {r['workers']} | {r['img_s']:.0f} | {r['img_s_core']:.0f} |" for r in tp["rows"]]
        one = {r["side"]: r["img_s"] for r in tp["rows"] if r["workers"] == 0}
        note = ""
        if 224 in one and len(one) > 1:
            smaller = min(one)
            note = (f" On one core, loading at {smaller} px runs at {one[smaller] / one[224]:.2f}x the rate at 224 px "
                    "(the files' own size, so no resize runs there): " +
                    ("resizing costs more than decoding." if one[smaller] < one[224] else
                     "decoding dominates, and a smaller side saves little."))
        lines += ["", "Per core: divided by the workers (0 workers: the main process decodes, one core)." + note, ""]
    if run:
        lines += ["### One pipeline run", "", "```", "sslguard detect --config detect_imagefolder " + " ".join(run["args"]),
                  "```", "", f"Wall time {run['wall']:.0f} s, peak RSS {run['peak_rss_mb']:.0f} MB, "
                  f"{run['flagged']} images flagged (no attack injected).", "",
                  "| stage | seconds |", "|---|---:|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in run["stages"].items()]
        lines += ["", "Its closing lines:", "", "```", *run["tail"], "```", ""]
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    """Put ``text`` between the section markers of ``path`` (appended when the file has none)."""
    old = path.read_text() if path.exists() else "# Scale\n"
    if START in old and END in old:
        new = old[:old.index(START)] + text + old[old.index(END) + len(END) + 1:]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--sides", type=int, nargs="+", default=[64, 96, 224])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--pipeline-args", nargs="*", default=[], help="extra overrides for the pipeline run")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sslguard_scale_images"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "scale.md")
    a = ap.parse_args(argv)
    if not a.root.is_dir():
        print(f"{a.root} not found: nothing to measure", file=sys.stderr)
        return 1
    tp = throughput(a.root, a.sides, a.workers)
    run = None if a.skip_pipeline else pipeline_run(a.root, a.pipeline_args, a.work)
    write_section(a.out, render(tp, run, a.root))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
