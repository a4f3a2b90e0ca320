"""One reduction helper for every loss: token-mean or sequence-mean over a *global* count.

With gradient accumulation or several processes, averaging each micro-batch separately weights
tokens unequally (a short micro-batch counts as much as a long one). Instead each micro-batch
returns `sum(values * mask) / normalizer`, where `normalizer` is the token (or sequence) count of
the whole global batch; summing the micro-batch losses over accumulation steps and processes then
gives exactly the global mean (OpenRLHF's `aggregate_loss`, TRL issue #2175).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# A sum over processes, e.g. `lambda t: accelerator.reduce(t, "sum")`; None = this process only.
AllReduce = Callable[[torch.Tensor], torch.Tensor] | None


def masked_mean(
    values: torch.Tensor, mask: torch.Tensor, dim: int | None = None, all_reduce: AllReduce = None
) -> torch.Tensor:
    """Mean of `values` where `mask` is 1; over all elements, or along `dim` (0 where empty).

    With `all_reduce` (whole-tensor mean only) the sum and the count are summed over processes
    first, so N processes get exactly the mean of the global batch, not a mean of means.
    """
    mask = mask.to(values.dtype)
    if dim is None:
        total = torch.stack([(values * mask).sum(), mask.sum()])
        if all_reduce is not None:
            total = all_reduce(total)
        return total[0] / total[1].clamp(min=1)
    if all_reduce is not None:
        raise ValueError("masked_mean: all_reduce needs dim=None")
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def aggregate(
    values: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean", normalizer: float | None = None
) -> torch.Tensor:
    """Reduce per-token `values` (B, T) under `mask` (B, T) to a scalar.

    token_mean: sum over all tokens / normalizer (global token count; local count if None).
    seq_mean:   mean over tokens within each sequence, then sum over sequences / normalizer
                (global sequence count; local B if None).
    constant:   sum over all tokens / normalizer, which must be given and must not depend on the
                responses' lengths: Dr. GRPO (Liu et al. 2025, sec. 3) divides by
                global sequence count * max_new_tokens, so a token's weight depends neither on
                its response's length (seq_mean) nor on the batch's (token_mean); with the
                global sequence count alone it is a per-sequence sum (REINFORCE's sum_t).
    """
    mask = mask.to(values.dtype)
    if mode == "token_mean":
        denom = normalizer if normalizer is not None else mask.sum().clamp(min=1)
        return (values * mask).sum() / denom
    if mode == "seq_mean":
        per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        denom = normalizer if normalizer is not None else values.shape[0]
        return per_seq.sum() / denom
    if mode == "constant":
        if normalizer is None:
            raise ValueError("aggregation mode 'constant' needs a normalizer (e.g. sequences * max_new_tokens)")
        return (values * mask).sum() / normalizer
    raise ValueError(f"unknown aggregation mode {mode!r}; expected token_mean, seq_mean or constant")
