"""Bradley–Terry reward-model losses: pairwise and K-wise (InstructGPT), soft labels, margin.

Bradley & Terry (1952): P(y_w ≻ y_l | x) = σ(r(x, y_w) − r(x, y_l)). A ranking of K responses
implies all C(K, 2) (winner, loser) pairs. InstructGPT (Ouyang et al. 2022, §3.5, eq. 1) scores
the K responses of one prompt once and averages the pair losses of that prompt:

    loss(x) = −1/C(K,2) · Σ_{(w,l)} log σ(r_w − r_l)

so every prompt weighs the same whatever its K, and the K forward passes are shared by all
pairs. A pairwise chosen/rejected record is the K = 2 case.

Extensions, all per pair (w, l) with Δ = r_w − r_l − m:
- soft label p = P(w ≻ l) (e.g. an AI judge's probability): −[p log σ(Δ) + (1−p) log σ(−Δ)];
  p = 1 is the hard loss above.
- margin m ≥ 0 (Llama 2, Touvron et al. 2023, eq. 2): the winner must beat the loser by m.
- reward centering (Eisenstein et al. 2023, "Helping or Herding"; TRL's
  `center_rewards_coefficient`): + η·(r_w + r_l)², which pins the unidentified offset of r
  near 0 without changing which response wins.

Tensor layout of a batch of G prompts with N responses and P pairs in all:
    rewards (N,)  one scalar per response row
    winners, losers (P,)  row indices into `rewards`
    groups (P,)  which prompt (0..G−1) each pair belongs to
    targets (P,) soft labels p (1.0 for a hard ranking), margins (P,)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def bradley_terry(delta: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-pair cross-entropy of σ(Δ) against target p: −[p log σ(Δ) + (1−p) log σ(−Δ)].  (P,)

    log σ is computed as `logsigmoid`, so large |Δ| neither overflows nor loses the gradient.
    """
    return -(targets * F.logsigmoid(delta) + (1.0 - targets) * F.logsigmoid(-delta))


def hinge(delta: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Ranking hinge max(0, 1 − Δ) (the margin-ranking loss of early preference work).  (P,)

    Soft labels are not meaningful here; targets are used as per-pair weights.
    """
    return targets * torch.clamp(1.0 - delta, min=0.0)


# Variants by name (the recipe's `loss.type`): add one here, not an if/elif in the recipe.
PAIR_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "bradley_terry": bradley_terry,
    "hinge": hinge,
}


def kwise_loss(
    rewards: torch.Tensor,
    winners: torch.Tensor,
    losers: torch.Tensor,
    groups: torch.Tensor,
    targets: torch.Tensor | None = None,
    margins: torch.Tensor | None = None,
    center_coef: float = 0.0,
    normalizer: float | None = None,
    loss_type: str = "bradley_terry",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """K-wise ranking loss: per prompt, the mean over its pairs; summed over prompts / normalizer.

        loss = 1/normalizer · Σ_g 1/|P_g| · Σ_{(w,l) ∈ P_g} [ℓ(r_w − r_l − m, p) + η (r_w + r_l)²]

    `normalizer` is the number of prompts in the *global* batch (every process and micro-batch),
    so that summing micro-batch losses gives the global mean over prompts, independent of
    accumulation and process count; None = the prompts in this call.
    Returns (loss, metrics); metrics are sums over this call's pairs (`pairs`, `correct`,
    `margin_sum`, `pair_loss_sum`) so the caller can add them across micro-batches.
    """
    if loss_type not in PAIR_LOSSES:
        raise ValueError(f"unknown loss type {loss_type!r}; expected one of {', '.join(PAIR_LOSSES)}")
    rewards = rewards.float()
    r_w, r_l = rewards[winners], rewards[losers]  # (P,)
    delta = r_w - r_l
    targets = torch.ones_like(delta) if targets is None else targets.to(delta)
    shifted = delta if margins is None else delta - margins.to(delta)
    per_pair = PAIR_LOSSES[loss_type](shifted, targets)
    if center_coef:
        per_pair = per_pair + center_coef * (r_w + r_l) ** 2

    # Mean within each prompt: weight 1/|P_g| per pair, via a scatter-add of ones per group.
    n_groups = int(groups.max().item()) + 1 if groups.numel() else 0
    pairs_per_group = torch.zeros(n_groups, device=delta.device).index_add_(0, groups, torch.ones_like(delta))
    weights = 1.0 / pairs_per_group[groups]  # (P,)
    denom = normalizer if normalizer is not None else max(n_groups, 1)
    loss = (per_pair * weights).sum() / denom

    with torch.no_grad():
        # A pair is "correct" when the model agrees with the label's majority side (p ≥ 0.5).
        agree = torch.where(targets >= 0.5, delta > 0, delta < 0).float()
        metrics = {
            "pairs": torch.tensor(float(delta.numel()), device=delta.device),
            "correct": agree.sum(),
            "margin_sum": delta.sum(),
            "pair_loss_sum": per_pair.sum(),
            "reward_sum": rewards.sum(),
            "reward_sq_sum": (rewards**2).sum(),
            "responses": torch.tensor(float(rewards.numel()), device=delta.device),
        }
    return loss, metrics


def pairwise_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    targets: torch.Tensor | None = None,
    margins: torch.Tensor | None = None,
    center_coef: float = 0.0,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Chosen/rejected batch (B,) each: the K = 2 case of `kwise_loss` (one pair per prompt)."""
    b = chosen_rewards.shape[0]
    rewards = torch.cat([chosen_rewards, rejected_rewards])  # (2B,)
    idx = torch.arange(b, device=rewards.device)
    return kwise_loss(rewards, idx, idx + b, idx, targets, margins, center_coef, normalizer)


def pairwise_metrics(delta: torch.Tensor, n_bins: int = 5) -> dict[str, float | list]:
    """Held-out metrics from Δ = r(labelled winner) − r(labelled loser), one per pair.  (P,)

    accuracy: share of pairs with Δ > 0 (ties count half); margin: mean Δ.
    Calibration: the model's probability for its own pick is c = σ(|Δ|) ∈ [0.5, 1]; pairs are
    binned by c into `n_bins` equal bins of [0.5, 1] and each bin's accuracy is compared with its
    mean c. ECE = Σ_bins (n_b / P) |acc_b − conf_b| (Guo et al. 2017). A calibrated RM's
    σ(r_w − r_l) is the probability the labeller prefers w, which PPO's reward scale relies on.
    """
    delta = delta.detach().double().flatten()
    n = delta.numel()
    if n == 0:
        return {"accuracy": float("nan"), "margin": float("nan"), "ece": float("nan"), "pairs": 0, "calibration": []}
    correct = (delta > 0).double() + 0.5 * (delta == 0).double()
    conf = torch.sigmoid(delta.abs())
    bins = torch.clamp(((conf - 0.5) * 2 * n_bins).long(), max=n_bins - 1)
    table, ece = [], 0.0
    for b in range(n_bins):
        inside = bins == b
        count = int(inside.sum())
        lo, hi = 0.5 + b * 0.5 / n_bins, 0.5 + (b + 1) * 0.5 / n_bins
        if count == 0:
            table.append({"bin": [lo, hi], "count": 0, "confidence": None, "accuracy": None})
            continue
        acc, c = correct[inside].mean().item(), conf[inside].mean().item()
        ece += count / n * abs(acc - c)
        table.append({"bin": [round(lo, 3), round(hi, 3)], "count": count, "confidence": c, "accuracy": acc})
    return {
        "accuracy": correct.mean().item(),
        "margin": delta.mean().item(),
        "ece": ece,
        "pairs": n,
        "calibration": table,
    }
