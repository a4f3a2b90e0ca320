"""ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model"),
as pure functions of token log-probs. No reference model.

Paper eq. 6-7, with length-normalised log-probs (mean over the response's tokens, eq. 2)
    log p(y|x) = (1/|y|) sum_t log pi(y_t | x, y_<t)
    log odds(y|x) = log p - log(1 - p)
    L = L_SFT(y_w) + lambda * L_OR,   L_OR = -log sigma(log odds(y_w|x) - log odds(y_l|x))

L_SFT is the NLL of the chosen response's tokens, reduced over the global token count like
`losses.sft` (TRL's ORPOTrainer also counts the prompt tokens in it; rlhfkit's SFT never does).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rlhfkit.losses.reduce import aggregate, masked_mean

_LN_HALF = -math.log(2.0)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x <= 0 without cancellation (Maechler 2012, "Accurately computing
    log(1 - exp(-|a|))"): log(-expm1(x)) near 0, log1p(-exp(x)) below -log 2. Each branch sees
    its input clamped to its own side so the unused branch stays finite and `torch.where`'s
    gradient is never NaN."""
    near_zero = torch.log(-torch.expm1(x.clamp(min=_LN_HALF)))
    far = torch.log1p(-torch.exp(x.clamp(max=_LN_HALF)))
    return torch.where(x > _LN_HALF, near_zero, far)


def log_odds(mean_logps: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) from log p. log p = 0 (every token certain, possible in float32 for a
    memorised response) is moved to the largest float below 0, giving a large finite log odds
    (about 87 in float32) instead of inf and NaN gradients."""
    x = mean_logps.clamp(max=-torch.finfo(mean_logps.dtype).tiny)
    return x - log1mexp(x)


def odds_ratio_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L_OR per pair (P,) = -log sigma(log odds(chosen) - log odds(rejected)), and that log odds
    ratio (P,). Inputs are the *mean* per-token log-probs (P,) of each response; computed in
    float32 at least."""
    chosen_logps, rejected_logps = chosen_logps.float(), rejected_logps.float()
    ratio = log_odds(chosen_logps) - log_odds(rejected_logps)
    return -F.logsigmoid(ratio), ratio


def orpo_loss(
    chosen_token_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_token_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    *,
    lam: float,
    token_normalizer: float | None = None,
    pair_normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The full ORPO loss of P pairs: NLL(chosen) + lam * L_OR.

    chosen_token_logps, chosen_mask: (P, T_w); rejected_token_logps, rejected_mask: (P, T_l);
    token log-probs are 0 or masked on padding. The NLL is summed over chosen tokens / the global
    chosen-token count (`token_normalizer`; local if None), L_OR summed over pairs / the global
    pair count (`pair_normalizer`; local P if None), so micro-batches and processes add up to the
    global-batch loss. Metrics are detached *sums*: `nll_sum`, `tokens`, `or_sum`,
    `log_odds_ratio`, `rewards/accuracy` (pairs whose chosen log odds are higher), `pairs`.
    """
    nll = aggregate(-chosen_token_logps, chosen_mask, "token_mean", token_normalizer)
    or_losses, ratio = odds_ratio_loss(
        masked_mean(chosen_token_logps, chosen_mask, dim=-1), masked_mean(rejected_token_logps, rejected_mask, dim=-1)
    )
    pairs = or_losses.shape[0] if pair_normalizer is None else pair_normalizer
    loss = nll + lam * or_losses.sum() / pairs
    with torch.no_grad():
        metrics = {
            "nll_sum": -(chosen_token_logps * chosen_mask).sum(),
            "tokens": chosen_mask.sum().to(or_losses.dtype),
            "or_sum": or_losses.sum(),
            "log_odds_ratio": ratio.sum(),
            "rewards/accuracy": (ratio > 0).float().sum(),
            "pairs": or_losses.new_tensor(float(or_losses.shape[0])),
        }
    return loss, metrics
