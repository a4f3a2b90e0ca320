"""Several processes without a `TrainSession`: the data-making recipes (compare, cai) and the
one-process jobs (judge, sample, eval) under `accelerate launch` / torchrun.

    state = processes()                                   # rank and world (PartialState)
    for chunk, result in sharded_chunks(n, batch_size, todo, state, work): ...   # chunks dealt out
    result = on_main_process(work, *args)                 # main works, the others wait for it
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def processes():
    """accelerate's `PartialState`: rank and world under `accelerate launch` / torchrun (it joins
    the process group a later `Accelerator` reuses), a single process otherwise. Without CUDA it
    must be told `cpu`, as `TrainSession` does, or torchrun's processes would each run alone."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def sharded_chunks(n: int, batch_size: int, todo: list[int], state, work: Callable[[list[int]], Any]):
    """Yield `(chunk, work(chunk))` in order for the position chunks of `range(n)` that hold a
    todo index; with several processes, process p computes chunk p of each wave of
    `num_processes` chunks and every process receives all results (`gather_object`)."""
    todo_set = set(todo)
    chunks = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    chunks = [c for c in chunks if todo_set.intersection(c)]
    world, rank = state.num_processes, state.process_index
    if world == 1:
        for chunk in chunks:
            yield chunk, work(chunk)
        return
    from accelerate.utils import gather_object

    for wave in range(0, len(chunks), world):
        group = chunks[wave : wave + world]
        mine = work(group[rank]) if rank < len(group) else None
        results = gather_object([mine])  # rank order = chunk order
        yield from zip(group, results[: len(group)], strict=True)


def on_main_process(work: Callable[..., Any], *args: Any, state=None) -> Any:
    """`work(*args)` on the main process only, for jobs that must run once (one RNG, one output
    file); the other processes wait for it, and every process returns its result (broadcast)."""
    state = state or processes()
    result = work(*args) if state.is_main_process else None
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        result = broadcast_object_list([result])[0]  # a collective: also the barrier
    return result
