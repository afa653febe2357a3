"""Scale: k-means and the density detector on synthetic embeddings of 100k, 300k and 1M rows x 512 dims.

    python benchmarks/scale.py                              # -> benchmarks/scale.md + .json (about 20 min, 2 cores)
    python benchmarks/scale.py --sizes 100000 --no-accuracy --out /tmp/scale.md     # a quick look

The embeddings are synthetic (a seeded Gaussian mixture, :func:`make_corpus`), written block by block
straight into a ``.npy`` memory map under ``--workdir`` and read back with ``np.load(mmap_mode="r")``,
as the pipeline reads ``embeddings.npy``. Each step runs in a fresh subprocess, so its time and peak
resident memory (that child's high-water mark, :func:`_peak_rss_mib`) are its own:

1. clustering: ``sslguard.cluster.kmeans(x, k)`` (k = 1000 by default);
2. density: ``sslguard.detectors.density.knn_distance(x, 10)`` (the detector's k-NN search; above
   ``EXACT_MAX`` rows an IVF index);
3. at the first size, the approximate search against the exact one (Spearman of the scores, share of
   the exact top 1% kept, error of the k-th neighbour distance) for a few ``nprobe``.

The largest size runs last, under ``nice -n 5``. Growth between sizes is given as the exponent ``b``
of ``time ~ N^b`` (and the same for memory).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file: the checkout's sslguard, not another installed copy
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

BLOCK = 50_000  # rows generated per block (the corpus does not depend on anything else)
TRIGGER_SHARE = 0.005
SPREAD = (0.15, 0.45)  # groups' offset scale (per subspace dimension)
NOISE = 0.4  # isotropic noise norm


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_corpus(path: Path, n: int, d: int = 512, components: int = 300, seed: int = 0) -> np.ndarray:
    """Write ``n`` synthetic embeddings (float32, (n, d)) to the ``.npy`` ``path`` block by block; return
    the trigger mask (n,).

    Each row belongs to one of ``components`` groups (sizes from a Dirichlet draw): a unit centre plus a
    group-scaled offset in a 16-dimensional subspace of its own plus isotropic noise, so neighbourhood
    density varies between groups; a share ``TRIGGER_SHARE`` of rows is a tight "trigger" group (nearly
    one point, what an SSL encoder does to images carrying a trigger it learned).
    """
    rng = np.random.default_rng(seed)
    r = 16
    # 30 "superclasses" of 10 groups each: sibling centres at cosine ~0.5, so neighbouring groups overlap
    supers = _unit(rng.normal(size=(components // 10 + 1, d)))
    centres = _unit(supers[np.arange(components) // 10] + _unit(rng.normal(size=(components, d))))
    centres = np.concatenate([centres, _unit(rng.normal(size=(1, d)))]).astype(np.float32)
    bases = (rng.normal(size=(components, r, d)) / np.sqrt(d)).astype(np.float32)
    scale = rng.uniform(SPREAD[0], SPREAD[1], size=components).astype(np.float32)
    weights = np.append(rng.dirichlet(np.full(components, 2.0)) * (1 - TRIGGER_SHARE), TRIGGER_SHARE)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    trigger = np.zeros(n, dtype=bool)
    for b, s in enumerate(range(0, n, BLOCK)):
        g = np.random.default_rng([seed, b])
        m = min(BLOCK, n - s)
        comp = g.choice(components + 1, size=m, p=weights)
        x = centres[comp] + NOISE * g.normal(size=(m, d)).astype(np.float32) / np.sqrt(d)
        for c in np.unique(comp[comp < components]):
            rows = np.flatnonzero(comp == c)
            x[rows] += scale[c] * g.normal(size=(len(rows), r)).astype(np.float32) @ bases[c]
        tight = comp == components
        x[tight] = centres[components] + 0.02 * g.normal(size=(int(tight.sum()), d)).astype(np.float32) / np.sqrt(d)
        out[s:s + m] = x
        trigger[s:s + m] = tight
        out.flush()
        out._mmap.madvise(mmap.MADV_DONTNEED)  # written pages leave this process's resident set
    out.flush()
    del out
    return trigger


def _peak_rss_mib() -> float:
    """This process's peak resident memory: ``VmHWM`` (Linux), else ``ru_maxrss``.

    Why not ``ru_maxrss`` on Linux: it is kept across ``exec``, so a child started by ``subprocess``
    (vfork + exec) reports at least its parent's peak (here the parent writes the corpus); ``VmHWM``
    belongs to the child's own address space.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux and BSD: KiB


def run_child(step: str, path: Path, k: int = 1000, niter: int = 25, **extra) -> dict:
    """Run :func:`child` in a fresh interpreter (niceness inherited) and return its result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", step, "--child-path", str(path),
           "--k", str(k), "--niter", str(niter), "--child-extra", json.dumps(extra)]
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{step} on {path} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["load_before"] = load
    print(f"  {step} {path.name} {extra.get('knn', '')}: {res}", flush=True)
    return res


def exact_check(path: str, kdist_path: str, rows: int, k: int = 10, seed: int = 0) -> dict:
    """The exact ``k``-th neighbour distance of ``rows`` seeded rows against all rows (numpy, block by block),
    compared with the saved approximate ones."""
    from scipy.stats import spearmanr

    from sslguard.utils.chunks import iter_rows

    x = np.load(path, mmap_mode="r")
    approx = np.load(kdist_path)
    q = np.sort(np.random.default_rng(seed).choice(len(x), size=rows, replace=False))
    qn = _unit(np.asarray(x[q], dtype=np.float32))
    best = np.full((rows, k + 1), -np.inf, dtype=np.float32)
    for _, block in iter_rows(x, 8192):
        both = np.concatenate([best, qn @ _unit(block).T], axis=1)
        best = -np.partition(-both, k, axis=1)[:, :k + 1]
    exact = np.maximum(1.0 - best.min(1).astype(np.float64), 0.0)
    a = approx[q]
    rel = (a - exact) / np.maximum(exact, 1e-9)
    return {"rows": rows, "equal_share": float(np.mean(np.abs(a - exact) < 1e-5)),
            "median_rel_err": float(np.median(rel)), "p99_rel_err": float(np.quantile(rel, 0.99)),
            "spearman": float(spearmanr(exact, a).statistic)}


def child(step: str, path: str, k: int, niter: int, extra: dict) -> dict:
    """One measured step, in this (fresh) process: ``{"seconds", "cpu_seconds", "peak_rss_mib", ...}``."""
    import faiss  # noqa: F401  (loaded before the baseline, like the package modules)

    from sslguard.cluster import kmeans
    from sslguard.detectors.density import ivf_params, knn_distance

    if step == "check":
        return exact_check(path, extra["kdist"], extra["rows"])
    x = np.load(path, mmap_mode="r")
    base = _peak_rss_mib()
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    out: dict = {}
    if step == "kmeans":
        r = kmeans(x, k, niter=niter, seed=0)
        out["empty_clusters"] = int((r.sizes == 0).sum())
    elif step == "density":
        np.save(extra["save"], knn_distance(x, 10, **extra.get("knn", {})))
        out["nlist_nprobe"] = ivf_params(len(x))
    else:
        raise ValueError(step)
    out.update(seconds=time.perf_counter() - t0, cpu_seconds=_cpu_seconds() - cpu0, peak_rss_mib=_peak_rss_mib(),
               baseline_rss_mib=base)
    return out


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def machine() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count()}
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        fields = dict(line.split(":", 1) for line in lines if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        info.update(cpu=fields.get("Model name", info["cpu"]), family=fields.get("CPU family"), model=fields.get("Model"),
                    threads_per_core=fields.get("Thread(s) per core"),
                    cores_per_socket=fields.get("Core(s) per socket"), sockets=fields.get("Socket(s)"),
                    avx512="avx512f" in fields.get("Flags", ""), hypervisor=fields.get("Hypervisor vendor"))
    except OSError:
        pass
    info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    import faiss

    info.update(faiss=faiss.__version__, numpy=np.__version__, faiss_threads=faiss.omp_get_max_threads(),
                python=platform.python_version())
    return info


def growth(sizes: list[int], values: list[float]) -> str:
    """Exponent b of value ~ N^b between consecutive sizes."""
    out = [f"{np.log(values[i + 1] / values[i]) / np.log(sizes[i + 1] / sizes[i]):.2f}"
           f" ({sizes[i] // 1000}k->{sizes[i + 1] // 1000}k)" for i in range(len(sizes) - 1)]
    return ", ".join(out) or "-"


def rank_metrics(exact: np.ndarray, approx: np.ndarray, trigger: np.ndarray) -> dict:
    """Spearman of the scores, share of the exact top 1% kept in the approximate top 1%, share of equal
    distances, relative error quantiles, and the trigger rows' share in the approximate top 1%."""
    from scipy.stats import spearmanr

    top = max(1, len(exact) // 100)
    te, ta = np.argsort(exact, kind="stable")[:top], np.argsort(approx, kind="stable")[:top]
    rel = (approx - exact) / np.maximum(exact, 1e-9)
    return {"spearman": float(spearmanr(exact, approx).statistic), "top1_kept": len(np.intersect1d(te, ta)) / top,
            "equal_share": float(np.mean(np.abs(approx - exact) < 1e-5)), "median_rel_err": float(np.median(rel)),
            "p99_rel_err": float(np.quantile(rel, 0.99)), "trigger_in_top1": float(np.isin(np.flatnonzero(trigger), ta).mean())}


def table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(out + ["| " + " | ".join(str(v) for v in r) + " |" for r in rows])


def accuracy_runs(path: Path, n: int, trigger: np.ndarray, workdir: Path, kdist_default: Path, default: dict,
                  variants: list[dict]) -> list[dict]:
    """The exact search on all ``n`` rows, then the detector's default search and each IVF variant, each
    with :func:`rank_metrics` against the exact one."""
    from sslguard.detectors.density import EXACT_MAX, ivf_params

    exact_path = workdir / f"kdist_exact_{n}.npy"
    ex = run_child("density", path, save=str(exact_path), knn={"exact_max": 10**12})
    exact = np.load(exact_path)
    nlist0, nprobe0 = ivf_params(n)
    runs = [{"search": "exact (IndexFlatIP)", "nlist": None, "nprobe": None, **ex,
             **rank_metrics(exact, exact, trigger)}]
    todo = [({}, default, kdist_default)]
    for v in variants:
        out = workdir / f"kdist_{n}_{v.get('nlist', nlist0)}_{v.get('nprobe', nprobe0)}.npy"
        todo.append((v, run_child("density", path, save=str(out), knn={"exact_max": 0, **v}), out))
    for v, res, out in todo:
        ivf = bool(v) or n > EXACT_MAX
        runs.append({"search": ("IVF" if ivf else "exact") + ("" if v else " (the default here)"),
                     "nlist": v.get("nlist", nlist0) if ivf else None, "nprobe": v.get("nprobe", nprobe0) if ivf else None,
                     **res, **rank_metrics(exact, np.load(out), trigger)})
    return runs


def measure(args) -> dict:
    """Every size's steps (the largest under ``nice``), and the accuracy section at the first size."""
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out = {"machine": machine(), "sizes": {}, "accuracy": None}
    print(out["machine"], flush=True)
    sizes = sorted(args.sizes)
    for i, n in enumerate(sizes):
        if i == len(sizes) - 1 and args.nice and len(sizes) > 1:
            os.nice(args.nice)  # the largest size: every step (children inherit it) at lower priority
        path = workdir / f"emb_{n}.npy"
        t0 = time.perf_counter()
        trigger = make_corpus(path, n, args.dim)
        row = {"corpus_seconds": time.perf_counter() - t0, "niceness": os.nice(0)}
        print(f"{n}: corpus written in {row['corpus_seconds']:.0f} s", flush=True)
        row["kmeans"] = run_child("kmeans", path, args.k, args.niter)
        kdist = workdir / f"kdist_{n}.npy"
        row["density"] = run_child("density", path, save=str(kdist))
        row["check"] = exact_check(str(path), str(kdist), args.check_rows) if args.check_rows else None
        row["trigger_in_top1"] = rank_metrics(np.load(kdist), np.load(kdist), trigger)["trigger_in_top1"]
        out["sizes"][n] = row
        print(f"  check {row['check']}", flush=True)
        if i == 0 and not args.no_accuracy:
            variants = [{"nprobe": 8}, {"nprobe": 32}, {"nlist": int(round(2 * np.sqrt(n)))}]
            out["accuracy"] = {"n": n, "runs": accuracy_runs(path, n, trigger, workdir, kdist, row["density"], variants)}
        if not args.keep:
            path.unlink()
    if not args.keep:
        for f in workdir.glob("kdist_*.npy"):
            f.unlink()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=1000, help="k-means clusters")
    ap.add_argument("--niter", type=int, default=25, help="k-means iterations")
    ap.add_argument("--check-rows", type=int, default=2000, help="rows checked against an exact search per size")
    ap.add_argument("--no-accuracy", action="store_true", help="skip the exact-vs-approximate section")
    ap.add_argument("--nice", type=int, default=5, help="niceness of the largest size's steps")
    ap.add_argument("--workdir", default="/tmp/sslguard_scale")
    ap.add_argument("--keep", action="store_true", help="keep the corpora in --workdir")
    ap.add_argument("--out", default=str(Path(__file__).with_name("scale.md")),
                    help="the markdown; the raw results go beside it (.json)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-path", help=argparse.SUPPRESS)
    ap.add_argument("--child-extra", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.child_path, args.k, args.niter, json.loads(args.child_extra))))
        return 0
    t0 = time.perf_counter()
    results = measure(args)
    results.update(command=" ".join(["python benchmarks/scale.py", *(argv if argv is not None else sys.argv[1:])]),
                   date=time.strftime("%Y-%m-%d"), seconds=time.perf_counter() - t0,
                   settings={"dim": args.dim, "k": args.k, "niter": args.niter, "check_rows": args.check_rows,
                             "workdir": args.workdir})
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    text = render(results)
    if out.exists() and KEEP_SECTION in out.read_text():  # a section written by hand stays
        old = out.read_text()
        text = text.rstrip("\n") + "\n\n" + old[old.index(KEEP_SECTION):].lstrip("\n")
    out.write_text(text)
    print(f"wrote {out} and {out.with_suffix('.json').name} ({results['seconds'] / 60:.1f} min)")
    return 0


KEEP_SECTION = "## Image folders"


def _para(text: str) -> str:
    return textwrap.fill(" ".join(text.split()), 104)


def render(r: dict) -> str:
    from sslguard.cluster import POINTS_PER_CENTROID, SAMPLE_ABOVE
    from sslguard.detectors.density import EXACT_MAX, IVF_LISTS_PER_SQRT_N, IVF_NPROBE, IVF_TRAIN_PER_LIST

    m, st = r["machine"], r["settings"]
    sizes = sorted(int(n) for n in r["sizes"])
    rows = [r["sizes"][n] if n in r["sizes"] else r["sizes"][str(n)] for n in sizes]
    km, de = [x["kmeans"] for x in rows], [x["density"] for x in rows]
    base = max(x["baseline_rss_mib"] for x in km + de)
    parts = ["# Scale: k-means and the density detector on corpora past memory (synthetic embeddings)",
             _para(f"Written by `{r['command']}` on {r['date']}; the whole run took {r['seconds'] / 60:.0f} min."),
             _para(f"""Machine: {m.get('cpu')} (CPU family {m.get('family')}, model {m.get('model')}), {m.get('sockets')}
                   socket x {m.get('cores_per_socket')} cores x {m.get('threads_per_core')} thread(s) per core
                   ({m.get('logical_cpus')} logical CPUs; AVX-512 {'yes' if m.get('avx512') else 'no'}), a
                   {m.get('hypervisor') or 'bare-metal'} virtual machine with {m.get('memory_gib')} GiB RAM; faiss
                   {m.get('faiss')} on {m.get('faiss_threads')} OpenMP threads, numpy {m.get('numpy')}, Python
                   {m.get('python')}. The machine was shared with other jobs: the load average before each step is
                   in the table (2.0 = both cores already busy). CPU seconds (user + system of the step's own
                   process) depend less on that than wall seconds."""),
             "## Corpus and steps",
             _para(f"""Synthetic embeddings, {st['dim']} dimensions, float32, written block by block into a `.npy`
                   memory map ({st['workdir']}) and read back with `np.load(path, mmap_mode="r")`, as the pipeline
                   reads `embeddings.npy`: 300 Gaussian groups (sizes from a Dirichlet draw) under 30
                   "superclasses" whose groups overlap, each a unit centre plus a scaled offset in a
                   16-dimensional subspace of its own plus isotropic noise; {TRIGGER_SHARE:.1%} of the rows form a
                   tight "trigger" group (`make_corpus`, seed 0). Each step runs in a fresh process; its peak RSS
                   is that process's high-water mark (`VmHWM`: Linux keeps `ru_maxrss` across `exec`, so a
                   child's `ru_maxrss` would include its parent's), {base:.0f} MiB of it before the step
                   (interpreter, numpy, faiss and the package, which loads torch). Pages of the memory map count
                   in RSS while resident; the package hands them back after each block of rows
                   (`sslguard.utils.chunks`), so the peaks are the steps' working memory, not the file's
                   size."""),
             _para(f"""- k-means: `sslguard.cluster.kmeans(x, k={st['k']}, niter={st['niter']})` (spherical, k-means++).
                   Up to {SAMPLE_ABOVE:,} rows it trains on every row; above, on a seeded sample of
                   max({SAMPLE_ABOVE:,}, {POINTS_PER_CENTROID} x k) rows, and checks, normalises and assigns every
                   row block by block."""),
             _para(f"""- density: `sslguard.detectors.density.knn_distance(x, 10)`, the detector's search. Up to
                   {EXACT_MAX:,} rows exact; above, `IndexIVFFlat` (inner product), nlist =
                   {IVF_LISTS_PER_SQRT_N:g} x sqrt(N) lists trained on {IVF_TRAIN_PER_LIST} rows per list,
                   nprobe = {IVF_NPROBE}."""),
             _para(f"""- exact check: for {st['check_rows']:,} seeded rows, the exact 10th-neighbour distance against
                   all rows (numpy, block by block) against the search's: the share equal (to 1e-5), the 99th
                   percentile of the relative error (one-sided: a missed neighbour only lengthens the distance),
                   and the Spearman correlation over those rows."""),
             "## Time and peak memory",
             table(["rows", "file GiB", "corpus s", "k-means s", "k-means CPU s", "k-means peak RSS MiB",
                    "empty clusters", "density s", "density CPU s", "density peak RSS MiB", "density search",
                    "exact check: equal / p99 rel. err. / Spearman", "trigger rows in top 1%",
                    "load before (k-means / density)", "niceness"],
                   [[f"{n:,}", f"{n * st['dim'] * 4 / 2**30:.2f}", f"{x['corpus_seconds']:.0f}",
                     f"{x['kmeans']['seconds']:.0f}", f"{x['kmeans']['cpu_seconds']:.0f}",
                     f"{x['kmeans']['peak_rss_mib']:.0f}", x["kmeans"]["empty_clusters"],
                     f"{x['density']['seconds']:.0f}", f"{x['density']['cpu_seconds']:.0f}",
                     f"{x['density']['peak_rss_mib']:.0f}",
                     "exact" if n <= EXACT_MAX else "IVF nlist {} nprobe {}".format(*x["density"]["nlist_nprobe"]),
                     "{equal_share:.3f} / {p99_rel_err:.4f} / {spearman:.4f}".format(**x["check"]) if x["check"] else "-",
                     f"{x['trigger_in_top1']:.3f}", f"{x['kmeans']['load_before']:.1f} / {x['density']['load_before']:.1f}",
                     x["niceness"]] for n, x in zip(sizes, rows)])]
    if len(sizes) > 1:
        above = lambda xs: [x["peak_rss_mib"] - x["baseline_rss_mib"] for x in xs]  # noqa: E731
        parts += ["Growth, as the exponent b of value ~ N^b between consecutive sizes (memory: the peak above the "
                  "step's starting RSS):",
                  f"- k-means: wall time {growth(sizes, [x['seconds'] for x in km])}; CPU time "
                  f"{growth(sizes, [x['cpu_seconds'] for x in km])}; memory {growth(sizes, above(km))}.",
                  f"- density: wall time {growth(sizes, [x['seconds'] for x in de])}; CPU time "
                  f"{growth(sizes, [x['cpu_seconds'] for x in de])}; memory {growth(sizes, above(de))}.",
                  _para(f"""What the design predicts, to read the exponents against: above {SAMPLE_ABOVE:,} rows
                        k-means trains on a sample of fixed size (here {max(SAMPLE_ABOVE, POINTS_PER_CENTROID * st['k']):,}
                        rows), so its training time and memory stay flat and only the assignment pass grows
                        (linearly, one product with k centroids per row); below, every row trains. The density
                        search keeps a float32 copy of the normalised rows in its index (N x D x 4 bytes), so its
                        memory grows linearly; its time grows as about N^1.5 (nlist ~ sqrt(N) lists, each query
                        scanning nprobe lists of about sqrt(N) rows, and adding costs N x nlist products). With
                        nprobe fixed, the share of the corpus a query scans falls as 1/sqrt(N), so the search
                        misses more neighbours as N grows (the exact check column); the trigger group, tight by
                        construction, is unaffected.""")]
    if r.get("accuracy"):
        acc = r["accuracy"]
        parts += [f"## The approximate search against the exact one (N = {acc['n']:,})",
                  _para("""The exact search (`IndexFlatIP`, every pair) against `IndexIVFFlat` settings on the same
                        corpus, all rows. The detector ranks by the 10th-neighbour distance (smallest first, its
                        "tight" direction): Spearman of the distances; the share of the exact top 1% that is in the
                        approximate top 1%; the share of rows whose distance is the exact one (to 1e-5); the median
                        and 99th percentile of the relative error; the trigger group's share in the approximate top
                        1%."""),
                  table(["search", "nlist", "nprobe", "wall s", "CPU s", "peak RSS MiB", "Spearman", "top 1% kept",
                         "equal share", "median rel. err.", "p99 rel. err.", "trigger rows in top 1%"],
                        [[a["search"], a["nlist"] or "-", a["nprobe"] or "-", f"{a['seconds']:.0f}",
                          f"{a['cpu_seconds']:.0f}", f"{a['peak_rss_mib']:.0f}", f"{a['spearman']:.5f}",
                          f"{a['top1_kept']:.3f}", f"{a['equal_share']:.3f}", f"{a['median_rel_err']:.4f}",
                          f"{a['p99_rel_err']:.4f}", f"{a['trigger_in_top1']:.3f}"] for a in acc["runs"]])]
    parts += ["## Limits of these numbers",
              _para("""- Synthetic data: real encoders' embeddings are not a Gaussian mixture, and how many true
                    neighbours an inverted-file index misses depends on how clustered the rows are, so the
                    approximation error here is this corpus's; `exact_check` measures it on any `.npy`."""),
              _para("""- Wall seconds on a shared two-core machine vary with the other jobs (the load column); CPU
                    seconds are the steadier measure of work.""")]
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.exit(main())
