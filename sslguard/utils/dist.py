"""Per-image work shared across processes by chunk and gathered back in order.

Under ``accelerate launch`` / ``torchrun`` every process runs the same detector code on the same data with
the same seeds, so every decision is replicated; only the heavy per-image steps (masking, paste tests,
Grad-CAM, the poison classifier's scoring) are split. :func:`map_chunks` gives chunk ``j`` to process
``j % world`` and all-gathers the results, so each process ends with the full, ordered list.

Why by chunk and not by contiguous shard: a chunk holds the same images in the same batch at any process
count, so each output is computed from the same batch as in a one-process run (batch composition can
change a convolution's float result on some kernels), and the gathered results equal one process's.
Written here because accelerate's ``split_between_processes`` splits contiguously and its
``gather_object`` loses the chunk order.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

T = TypeVar("T")


def rank_world(accelerator) -> tuple[int, int]:
    """``(process index, number of processes)``; ``(0, 1)`` without an accelerator."""
    if accelerator is None:
        return 0, 1
    return int(accelerator.process_index), int(accelerator.num_processes)


def map_chunks(fn: Callable[[Any], T], chunks: Sequence[Any], accelerator=None) -> list[T]:
    """``[fn(c) for c in chunks]``, chunk ``j`` computed on process ``j % world``.

    Every process must call this with the same ``chunks`` (the gather is collective) and gets every result
    in chunk order. Results travel pickled: return numpy arrays or Python numbers, not device tensors.
    """
    rank, world = rank_world(accelerator)
    if world == 1:
        return [fn(c) for c in chunks]
    import torch.distributed as dist

    mine = {j: fn(chunks[j]) for j in range(rank, len(chunks), world)}
    gathered: list = [None] * world
    dist.all_gather_object(gathered, mine)
    merged: dict[int, T] = {}
    for part in gathered:
        merged.update(part)
    missing = [j for j in range(len(chunks)) if j not in merged]
    if missing:
        raise RuntimeError(f"map_chunks: no result for chunks {missing[:5]} (processes called it with other chunks)")
    return [merged[j] for j in range(len(chunks))]


def broadcast_module(module, accelerator=None):
    """Copy the main process's weights and buffers of ``module`` to every process (in place); returns it.

    Used after a small model was trained on every process from the same seed: on GPUs with
    non-deterministic kernels the copies could drift apart, and the later collective steps would then
    disagree about what to compute."""
    _, world = rank_world(accelerator)
    if world == 1:
        return module
    from accelerate.utils import broadcast_object_list

    state = [{k: v.detach().cpu() for k, v in module.state_dict().items()}]
    broadcast_object_list(state, from_process=0)
    module.load_state_dict(state[0])
    return module


def broadcast_value(value: T, accelerator=None) -> T:
    """The main process's ``value`` on every process (a picklable object)."""
    _, world = rank_world(accelerator)
    if world == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]
