"""Per-token log-probabilities and entropies from logits (shared by SFT, DPO and PPO)."""

from __future__ import annotations

import torch


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(labels[t] | <t) for already-aligned logits (B, T, V) and labels (B, T).

    Callers shift: logits[:, :-1] predict input_ids[:, 1:]. Positions whose label is negative
    (-100, ignored) get log-prob 0. Uses gather - logsumexp so the (B, T, V) log-softmax is never
    materialised. Sampled at a temperature T, pass logits / T (`experience.response_logits` does):
    log-probs must be those of the sampling distribution (TRL issue #1264).
    """
    logits = logits.float()
    safe = labels.clamp(min=0)
    picked = torch.gather(logits, -1, safe.unsqueeze(-1)).squeeze(-1)
    logps = picked - torch.logsumexp(logits, dim=-1)
    return torch.where(labels >= 0, logps, torch.zeros_like(logps))


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical over the last dim: logsumexp(l) - sum softmax(l) * l.  (B, T)"""
    logits = logits.float()
    p = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(-1)
