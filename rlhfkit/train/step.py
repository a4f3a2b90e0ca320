"""One optimizer step, the same in every recipe: micro-batches, `no_sync`, global loss scaling,
clipping, optimizer and scheduler step.

    result = train_step(s, [policy, critic], optimizer, scheduler, micro_batches, loss_fn, max_grad_norm)

`loss_fn(micro)` returns `(loss, metrics)`: the micro-batch's share of the *global* batch loss
(already divided by the global token / sequence / pair count, `losses.reduce`) and a dict of
tensors to sum over micro-batches. DDP averages gradients over processes, so each backward is of
`loss * world_size`: the sum over processes and micro-batches is then exactly the global mean,
for any number of processes and any accumulation. Gradients synchronise only on the last
micro-batch (`no_sync` before it). Each model's gradient norm is clipped separately.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

M = TypeVar("M")


@dataclass
class StepResult:
    loss: torch.Tensor  # this process's summed micro-batch losses (its share of the global loss)
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # metrics summed over micro-batches
    grad_norms: list[float] = field(default_factory=list)  # per model, before clipping; [] when off


def train_step(s, models: Sequence[torch.nn.Module], optimizer, scheduler, micro_batches: Sequence[M],
               loss_fn: Callable[[M], tuple[torch.Tensor, dict[str, Any]]], max_grad_norm: float) -> StepResult:
    acc = s.accelerator
    result = StepResult(torch.zeros((), device=s.device))
    for j, micro in enumerate(micro_batches):
        with ExitStack() as sync:
            if j < len(micro_batches) - 1:  # gradients are all-reduced once, after the last one
                for model in models:
                    sync.enter_context(acc.no_sync(model))
            with acc.autocast():
                loss, metrics = loss_fn(micro)
                acc.backward(loss * s.world_size)
        result.loss += loss.detach()
        for k, v in metrics.items():
            v = v.detach() if isinstance(v, torch.Tensor) else torch.as_tensor(v, dtype=torch.float64)
            result.sums[k] = result.sums[k] + v if k in result.sums else v
    if max_grad_norm > 0:
        result.grad_norms = [float(acc.clip_grad_norm_(m.parameters(), max_grad_norm)) for m in models]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return result
