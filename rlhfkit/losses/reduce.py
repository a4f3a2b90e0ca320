"""One reduction helper for every loss: token-mean or sequence-mean over a *global* count.

With gradient accumulation or several processes, averaging each micro-batch separately weights
tokens unequally (a short micro-batch counts as much as a long one). Instead each micro-batch
returns `sum(values * mask) / normalizer`, where `normalizer` is the token (or sequence) count of
the whole global batch; summing the micro-batch losses over accumulation steps and processes then
gives exactly the global mean (OpenRLHF's `aggregate_loss`, TRL issue #2175).
"""

from __future__ import annotations

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum()


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` is 1; over all elements, or along `dim` (0 where empty)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def aggregate(
    values: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean", normalizer: float | None = None
) -> torch.Tensor:
    """Reduce per-token `values` (B, T) under `mask` (B, T) to a scalar.

    token_mean: sum over all tokens / normalizer (global token count; local count if None).
    seq_mean:   mean over tokens within each sequence, then sum over sequences / normalizer
                (global sequence count; local B if None).
    """
    mask = mask.to(values.dtype)
    if mode == "token_mean":
        denom = normalizer if normalizer is not None else mask.sum().clamp(min=1)
        return (values * mask).sum() / denom
    if mode == "seq_mean":
        per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        denom = normalizer if normalizer is not None else values.shape[0]
        return per_seq.sum() / denom
    raise ValueError(f"unknown aggregation mode {mode!r}; expected token_mean or seq_mean")
