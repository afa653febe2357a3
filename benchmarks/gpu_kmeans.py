"""k-means at a million rows: the product's FAISS k-means against Lloyd's iterations as GPU matrix products.

The corpus: ``--n`` rows of ``--d`` dimensions drawn around ``--k`` seeded Gaussian centres (unit
vectors, noise ``--noise`` per coordinate), float32, L2-normalised as the pipeline's embeddings are.
Rows:

- ``faiss`` -- :func:`sslguard.cluster.kmeans` as the pipeline calls it (spherical, k-means++ seeding,
  25 iterations, a seeded 200,000-row training sample above that size, then every row assigned), with
  FAISS's GPU index when the installed faiss has one, else on all the host's cores.
- ``torch`` -- spherical Lloyd written here as matrix products on the GPU (every row in every
  iteration, random rows as seeds): a yardstick for what the GPU gives when FAISS has no GPU build, as
  on a host whose CUDA is newer than the ``faiss-gpu`` wheels' (those bring their own CUDA 12 runtime
  and cuBLAS, hundreds of MB). Not a product path.

Each row: seconds, the mean cosine similarity of a row to its centroid (higher is tighter), and the
adjusted Rand index against the true centres. Writes one JSON object.

Limits: synthetic, well-separated clusters; one seed; wall-clock time of one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch


def synthetic(n: int, d: int, k: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x, truth)``: ``n`` unit rows around ``k`` random unit centres, and each row's centre."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    truth = torch.randint(0, k, (n,), generator=g)
    x = centres[truth] + noise * torch.randn(n, d, generator=g)
    return torch.nn.functional.normalize(x, dim=1).numpy(), truth.numpy()


def torch_lloyd(x: np.ndarray, k: int, niter: int, seed: int, device: str,
                chunk: int = 262_144) -> tuple[np.ndarray, float]:
    """Spherical Lloyd on ``device``: ``(assignments, mean similarity)``; ``chunk`` rows per product."""
    xs = torch.from_numpy(x).to(device)
    g = torch.Generator().manual_seed(seed)
    cent = xs[torch.randperm(len(xs), generator=g)[:k].to(device)].clone()
    assign = torch.empty(len(xs), dtype=torch.long, device=device)
    best = torch.empty(len(xs), device=device)
    for it in range(niter + 1):
        for s in range(0, len(xs), chunk):
            sim = xs[s:s + chunk] @ cent.T
            best[s:s + chunk], assign[s:s + chunk] = sim.max(dim=1)
        if it == niter:
            break
        sums = torch.zeros_like(cent).index_add_(0, assign, xs)
        empty = sums.norm(dim=1) == 0  # an empty cluster keeps its centroid
        cent = torch.where(empty[:, None], cent, torch.nn.functional.normalize(sums, dim=1))
    if xs.is_cuda:
        torch.cuda.synchronize()
    return assign.cpu().numpy(), float(best.mean())


def main(argv: list[str] | None = None) -> int:
    from sklearn.metrics import adjusted_rand_score

    from sslguard.cluster import faiss_gpu_available, kmeans

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--noise", type=float, default=0.03)
    ap.add_argument("--niter", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default=None, help="JSON file to write")
    args = ap.parse_args(argv)

    t = time.perf_counter()
    x, truth = synthetic(args.n, args.d, args.k, args.noise, args.seed)
    out: dict = {"n": args.n, "d": args.d, "k": args.k, "noise": args.noise, "niter": args.niter,
                 "make_s": time.perf_counter() - t, "torch": torch.__version__,
                 "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                 "faiss_gpu": faiss_gpu_available(), "rows": []}
    import faiss

    t = time.perf_counter()
    res = kmeans(x, args.k, niter=args.niter, seed=args.seed)
    where = "gpu" if out["faiss_gpu"] else f"cpu x{faiss.omp_get_max_threads()}"
    out["rows"].append({"method": "faiss", "where": where,
                        "faiss": faiss.__version__, "seconds": time.perf_counter() - t,
                        "mean_similarity": float(np.mean(res.distances)),
                        "ari_truth": float(adjusted_rand_score(truth, res.assignments))})
    print(json.dumps(out["rows"][-1]), flush=True)
    _write(out, args.output)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cuda":  # warm-up: CUDA context and cuBLAS handles are not the method's time
        torch_lloyd(x[:20_000], 10, 1, args.seed, dev)
    t = time.perf_counter()
    assign, sim = torch_lloyd(x, args.k, args.niter, args.seed, dev)
    out["rows"].append({"method": "torch", "where": dev, "seconds": time.perf_counter() - t, "mean_similarity": sim,
                        "ari_truth": float(adjusted_rand_score(truth, assign))})
    print(json.dumps(out["rows"][-1]), flush=True)
    _write(out, args.output)
    return 0


def _write(out: dict, path: str | None) -> None:
    # after each row, so a run stopped by its time limit keeps the rows it finished
    if path:
        with open(path, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())
