"""Supervised fine-tuning loss: next-token NLL on response tokens only."""

from __future__ import annotations

import torch

from rlhfkit.losses.logprobs import token_logps
from rlhfkit.losses.reduce import aggregate


def sft_loss(
    logits: torch.Tensor, labels: torch.Tensor, normalizer: float | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Masked next-token NLL.

    logits (B, T, V) from input_ids (B, T); labels (B, T) = input_ids with -100 on prompt and
    padding positions. Position t's logits predict labels[t+1], so both are shifted by one.
    Returns (loss, metrics) where loss = sum of NLL over response tokens / normalizer.
    """
    shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
    mask = (shift_labels >= 0).float()
    nll = -token_logps(shift_logits, shift_labels)
    loss = aggregate(nll, mask, "token_mean", normalizer)
    return loss, {"nll_sum": (nll * mask).sum().detach(), "tokens": mask.sum().detach()}


def count_target_tokens(labels: list[list[int]]) -> int:
    """Tokens that contribute to the loss (labels shifted by one, -100 excluded)."""
    return sum(sum(1 for t in seq[1:] if t >= 0) for seq in labels)
