import numpy as np
import torch

from sslguard.data import load_digits_dataset
from sslguard.embed import embed_dataset, extract


def test_extract_is_keyed_by_index_and_independent_of_batch_size():
    ds = load_digits_dataset("train").subset(np.arange(0, 120, 2)[::-1].copy())  # reversed, non-contiguous keys

    def fn(images):
        return {"mean": images.float().mean(dim=(1, 2, 3)), "first": images[:, 0, 0, 0]}

    keys_a, out_a = extract(ds, fn, batch_size=7, progress=False)
    keys_b, out_b = extract(ds, fn, batch_size=64, progress=False)
    assert np.array_equal(keys_a, ds.keys) and np.array_equal(keys_a, keys_b)
    assert np.allclose(out_a["mean"], out_b["mean"])
    expect = np.array([ds.load_array(i).mean() for i in range(len(ds))])
    assert np.allclose(out_a["mean"], expect, atol=1e-4)


def test_array_fast_path_gives_the_pil_path_pixels():
    """Items read with load_array (no PIL round trip) equal the PIL path's, resized or not."""
    from sslguard.data.transforms import ResizeUint8, TransformDataset

    ds = load_digits_dataset("test").subset(np.arange(12))
    for size in (None, 20):
        keys, out = extract(ds, lambda x: x.reshape(len(x), -1).float(), batch_size=5, image_size=size, progress=False)
        pil = TransformDataset(ds, ResizeUint8(size))
        expect = np.stack([pil[i][0].reshape(-1).numpy() for i in range(len(ds))]).astype(np.float32)
        assert np.array_equal(out["features"], expect)


def test_embed_dataset_cache_is_reused_and_checked(tmp_path):
    ds = load_digits_dataset("test").subset(np.arange(40))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 8))
    cache = tmp_path / "emb.npz"
    k1, f1 = embed_dataset(net, ds, batch_size=16, normalize=True, cache_path=cache, progress=False)
    assert np.allclose(np.linalg.norm(f1, axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        net[1].weight.zero_()  # a stale model: the cache must be what is returned
    k2, f2 = embed_dataset(net, ds, batch_size=16, normalize=True, cache_path=cache, progress=False)
    assert np.array_equal(f1, f2)
    other = load_digits_dataset("test").subset(np.arange(10))
    k3, _ = embed_dataset(net, other, cache_path=cache, progress=False)  # other indices: recomputed
    assert np.array_equal(k3, other.keys)


def test_two_processes_give_exactly_one_row_per_index(tmp_path):
    """37 images, batch 5, 2 processes: shards and the last batch are uneven; nothing lost or repeated."""
    from tests.multiproc import run_distributed

    code = """
    import sys, numpy as np
    from accelerate import Accelerator
    from sslguard.data import load_digits_dataset
    from sslguard.embed import extract
    acc = Accelerator(cpu=True)
    assert acc.num_processes == 2
    ds = load_digits_dataset("test").subset(np.arange(37))
    keys, out = extract(ds, lambda x: x.float().mean(dim=(1, 2, 3)), batch_size=5, accelerator=acc, progress=False)
    if acc.is_main_process:
        np.savez(sys.argv[1], keys=keys, f=out["features"])
    """
    run_distributed(code, tmp_path, args=[str(tmp_path / "out.npz")])
    got = np.load(tmp_path / "out.npz")
    ds = load_digits_dataset("test").subset(np.arange(37))
    keys, out = extract(ds, lambda x: x.float().mean(dim=(1, 2, 3)), batch_size=5, progress=False)
    assert len(got["keys"]) == 37 and len(np.unique(got["keys"])) == 37
    assert np.array_equal(got["keys"], keys) and np.allclose(got["f"], out["features"])


def test_progress_bars_are_quiet_when_not_on_a_terminal(capsys):
    """progress=True draws a bar on a terminal only: logs and CI output stay free of bar lines."""
    from sslguard.models import create_backbone

    ds = load_digits_dataset("test", size=16).subset(np.arange(40))
    embed_dataset(create_backbone("convnet4", width=4), ds, batch_size=8, progress=True)
    err = capsys.readouterr().err
    assert "it/s" not in err and "%|" not in err, err[-500:]


def test_out_path_streams_the_same_array_into_a_read_only_npy(tmp_path):
    """out_path: the rows are written batch by batch into a memory-mapped .npy; the file holds np.save's bytes
    of the in-memory result, comes back read-only, and nothing temporary is left beside it."""
    import pytest

    ds = load_digits_dataset("test", size=16).subset(np.arange(3, 50)[::-1].copy())  # 47 rows: a short last batch
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 6))
    keys, mem = embed_dataset(net, ds, batch_size=10, normalize=True, progress=False)
    out = tmp_path / "run" / "embeddings.npy"
    keys2, mapped = embed_dataset(net, ds, batch_size=10, normalize=True, progress=False, out_path=out)
    assert np.array_equal(keys, keys2) and np.array_equal(mem, mapped) and mapped.dtype == np.float32
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    np.save(tmp_path / "ref.npy", mem)
    assert out.read_bytes() == (tmp_path / "ref.npy").read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["embeddings.npy"]
    with pytest.raises(ValueError, match="not both"):
        embed_dataset(net, ds, out_path=out, cache_path=tmp_path / "c.npz", progress=False)


def test_out_path_is_atomic_when_embedding_fails(tmp_path):
    import pytest

    ds = load_digits_dataset("test", size=16).subset(np.arange(30))
    calls = []

    class Breaks(torch.nn.Module):
        def forward(self, x):
            calls.append(len(x))
            if len(calls) > 2:  # the probe, one batch, then a crash
                raise RuntimeError("killed mid-embedding")
            return x.flatten(1)[:, :4]

    out = tmp_path / "embeddings.npy"
    with pytest.raises(RuntimeError, match="killed"):
        embed_dataset(Breaks(), ds, batch_size=8, out_path=out, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_two_processes_stream_into_one_file(tmp_path):
    """Two processes each write their own batches into one .npy: the same bytes as one process in memory."""
    from tests.multiproc import run_distributed

    code = """
    import sys, numpy as np, torch
    from accelerate import Accelerator
    from sslguard.data import load_digits_dataset
    from sslguard.embed import embed_dataset
    acc = Accelerator(cpu=True)
    assert acc.num_processes == 2
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 5))
    ds = load_digits_dataset("test", size=16).subset(np.arange(37))
    keys, f = embed_dataset(net, ds, batch_size=5, accelerator=acc, progress=False, out_path=sys.argv[1])
    assert not f.flags.writeable and f.shape == (37, 5) and np.array_equal(keys, ds.keys)
    """
    run_distributed(code, tmp_path, args=[str(tmp_path / "out" / "emb.npy")])
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 5))
    ds = load_digits_dataset("test", size=16).subset(np.arange(37))
    _, f = embed_dataset(net, ds, batch_size=5, progress=False)
    np.save(tmp_path / "ref.npy", f)
    assert (tmp_path / "out" / "emb.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["emb.npy"]
