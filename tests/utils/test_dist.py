"""sslguard.utils.dist: chunked work split across processes and gathered in order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sslguard.utils.dist import broadcast_module, broadcast_value, map_chunks
from tests.multiproc import run_distributed

ROOT = Path(__file__).resolve().parents[2]


def test_one_process_is_a_plain_map():
    assert map_chunks(lambda c: c * 2, [3, 1, 2]) == [6, 2, 4]
    net = torch.nn.Linear(2, 2)
    assert broadcast_module(net) is net
    assert broadcast_value({"a": 1}) == {"a": 1}


def test_two_processes_split_the_chunks_and_all_get_them_in_order(tmp_path):
    code = f"""
    import sys, json, numpy as np, torch
    sys.path.insert(0, {str(ROOT)!r})
    from accelerate import Accelerator
    from sslguard.utils.dist import broadcast_module, broadcast_value, map_chunks
    acc = Accelerator(cpu=True)
    rank = acc.process_index
    done = []
    def fn(c):
        done.append(int(c))
        return np.full(int(c) % 3 + 1, c, dtype=np.float32)  # results of different sizes
    out = map_chunks(fn, list(range(7)), acc)
    torch.manual_seed(rank)  # different weights on each process before the broadcast
    net = broadcast_module(torch.nn.Linear(3, 2), acc)
    value = broadcast_value(f"from {{rank}}", acc)
    with open(sys.argv[1] + f"/rank{{rank}}.json", "w") as fh:
        json.dump({{"done": done, "out": [o.tolist() for o in out], "w": net.weight.tolist(), "value": value}}, fh)
    """
    run_distributed(code, tmp_path, args=[str(tmp_path)])
    import json

    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["done"] == [0, 2, 4, 6] and r1["done"] == [1, 3, 5]  # each chunk computed once, round-robin
    expected = [np.full(c % 3 + 1, c).tolist() for c in range(7)]
    assert r0["out"] == expected and r1["out"] == expected
    assert r0["w"] == r1["w"]  # the main process's weights everywhere
    torch.manual_seed(0)
    assert np.allclose(r0["w"], torch.nn.Linear(3, 2).weight.detach().numpy())
    assert r0["value"] == r1["value"] == "from 0"
