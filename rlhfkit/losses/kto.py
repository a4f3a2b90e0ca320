"""KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization"), as pure
functions of sequence log-probs. Examples are unpaired: each is one (x, y) with a desirable or
undesirable label.

    policy_logps, ref_logps   (N,)  log pi(y|x), log pi_ref(y|x), summed over response tokens
    desirable                 (N,)  bool
    kl_policy_logps, kl_ref_logps (M,)  the same for *mismatched* pairs (x_i, y_j), j != i, which
                              only estimate the reference point

Paper sec. 4, eq. 7 (as TRL cites it), with the log-ratio rho = log pi(y|x) - log pi_ref(y|x):

    z0   = max(0, KL(pi || pi_ref))  estimated as the mean rho over the mismatched pairs, detached
    loss = lambda_D * (1 - sigma(beta * (rho - z0)))   desirable
           lambda_U * (1 - sigma(beta * (z0 - rho)))   undesirable

The implied reward is r = beta * rho, so the reference point in reward units is beta * z0 (beta
multiplies both, as in the paper and TRL). z0 carries no gradient: the paper treats it as a
batch-level constant, so the loss moves each example's own log-ratio, not the reference.
"""

from __future__ import annotations

import torch

from rlhfkit.losses.reduce import AllReduce, masked_mean


def kto_reference_point(kl_policy_logps: torch.Tensor, kl_ref_logps: torch.Tensor,
                        all_reduce: AllReduce = None) -> torch.Tensor:
    """z0 = max(0, mean(kl_policy_logps - kl_ref_logps)), detached: a scalar.

    With `all_reduce` (a sum over processes) the mean is over the global batch's mismatched pairs,
    so N processes share one z0 (TRL gathers the per-process means and averages them, which is
    the same when every process holds as many pairs). Clamped at 0 because a true KL is >= 0 and
    the batch estimate can dip below it.
    """
    rho = (kl_policy_logps - kl_ref_logps).detach()
    return masked_mean(rho, torch.ones_like(rho), all_reduce=all_reduce).clamp(min=0)


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    reference_point: torch.Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-example KTO losses (N,) and metric *sums* over these N examples.

    The caller sums the losses over micro-batches and divides by the global example count, like
    `losses.dpo.preference_loss` does for pairs. Metrics: `rewards/chosen` and `rewards/rejected`
    (sums of beta * rho over desirable / undesirable examples), `count/chosen`, `count/rejected`
    (to divide those by, after summing over processes) and `kl` (z0, the same on every process).
    """
    rho = policy_logps - ref_logps  # (N,)
    desirable = desirable.bool()
    z0 = reference_point.detach()
    losses = torch.where(
        desirable,
        desirable_weight * (1.0 - torch.sigmoid(beta * (rho - z0))),
        undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - rho))),
    )
    rewards = beta * rho.detach()
    metrics = {
        "rewards/chosen": (rewards * desirable).sum(),
        "rewards/rejected": (rewards * ~desirable).sum(),
        "count/chosen": desirable.sum().to(rewards.dtype),
        "count/rejected": (~desirable).sum().to(rewards.dtype),
        "kl": z0,
    }
    return losses, metrics
