"""PPO maths as pure functions of tensors: KL estimators, per-token rewards, GAE, whitening,
the clipped surrogate, the clipped value loss and explained variance.

Conventions, shared with the PPO recipe:
- every per-token tensor is (B, T) over *response* tokens, right-padded; `mask` (B, T) is 1 on
  real response tokens (up to and including the first EOS) and 0 after, and real tokens form
  a prefix of each row;
- `policy_logps`, `old_logps`, `ref_logps` are log pi(y_t | x, y_<t) at the sampling temperature;
- losses return `(loss, metrics)`; the loss is reduced by `losses.reduce.aggregate` over a
  caller-supplied global `normalizer`, so micro-batching and processes do not change it.

Sources: Schulman et al. 2017 (PPO, clipped surrogate), Schulman et al. 2016 (GAE), Ziegler et
al. 2019 / lm-human-preferences (per-token KL penalty, adaptive beta, reward at the last token,
clipped value loss), Schulman's "Approximating KL divergence" note (k1/k2/k3).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlhfkit.losses.reduce import AllReduce, aggregate, masked_mean

# ----------------------------------------------------------------------------- KL estimators
# Per-token estimators of KL(pi || pi_ref) from samples y ~ pi, with log r = ref_logps - policy_logps:
#   k1 = -log r                 unbiased, can be negative per token
#   k2 = (log r)^2 / 2          biased, low variance, always >= 0
#   k3 = (r - 1) - log r        unbiased, always >= 0 (Schulman's note)


def kl_k1(policy_logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    return policy_logps - ref_logps


def kl_k2(policy_logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    return 0.5 * (ref_logps - policy_logps) ** 2


def kl_k3(policy_logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    log_r = ref_logps - policy_logps
    return torch.expm1(log_r) - log_r


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def kl_per_token(policy_logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """(B, T) KL estimate per response token, 0 on padding."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[estimator](policy_logps, ref_logps) * mask


# ----------------------------------------------------------------------------- rewards


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of each row's last real token (0 for an empty row)."""
    return (mask.sum(-1).long() - 1).clamp(min=0)


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """r_t = -beta * kl_t on every response token, plus the sequence score on the last one.

    scores (B,), kl (B, T) (already masked), mask (B, T) -> rewards (B, T), 0 on padding.
    Ziegler et al. 2019 eq. 2: R(x, y) = r(x, y) - beta * log(pi(y|x) / pi_ref(y|x)), spread
    over tokens so the critic sees the KL cost where it is paid.
    """
    rewards = -beta * kl * mask
    last = last_token_index(mask)
    return rewards.scatter_add(1, last[:, None], scores[:, None].to(rewards.dtype))


def whiten(
    values: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8,
    all_reduce: AllReduce = None,
) -> torch.Tensor:
    """(x - mean) / std over the masked entries (population variance, as tf.nn.moments in
    lm-human-preferences); with `shift_mean=False` the mean is added back (reward whitening keeps
    the sign of the average reward). Masked-out entries come back as 0.

    With `all_reduce` (a sum over processes) mean and variance are those of the global batch, in
    two exact passes (mean, then squared deviations from it): N processes whiten as one would.
    """
    if mask is None:
        mask = torch.ones_like(values)
    mask = mask.to(values.dtype)
    mean = masked_mean(values, mask, all_reduce=all_reduce)
    var = masked_mean((values - mean) ** 2, mask, all_reduce=all_reduce)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


# ----------------------------------------------------------------------------- GAE


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16), vectorised.

        delta_t = r_t + gamma * V_{t+1} - V_t      (V_{t+1} = 0 after the last real token)
        A_t     = sum_{k>=0} (gamma * lam)^k delta_{t+k}
        returns = A + V

    rewards, values, mask: (B, T). The sum is one (B, T) @ (T, T) product with the upper-
    triangular discount matrix D[s, t] = (gamma*lam)^(s-t) for s >= t, which is exact and
    stable (no division by small powers) and cheap for response lengths in the hundreds.
    Returns (advantages, returns), both (B, T) and 0 on padding.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    deltas = (rewards + gamma * next_values - values) * mask
    T = rewards.shape[1]
    idx = torch.arange(T, device=rewards.device)
    power = (idx[:, None] - idx[None, :]).to(values.dtype)  # power[s, t] = s - t
    discount = torch.where(power >= 0, torch.tensor(gamma * lam, dtype=values.dtype, device=values.device) ** power.clamp(min=0), torch.zeros_like(power))
    advantages = (deltas @ discount) * mask  # A[b, t] = sum_s deltas[b, s] * D[s, t]
    return advantages, (advantages + values) * mask


# ----------------------------------------------------------------------------- losses


def policy_loss(
    policy_logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    normalizer: float | None = None,
    mode: str = "token_mean",
    clip_eps_high: float | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate (PPO eq. 7), per token, minimised:

        ratio = exp(policy_logps - old_logps)
        L = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)

    All (B, T). eps_low = clip_eps; eps_high = clip_eps_high, or clip_eps when None. A larger
    eps_high is DAPO's clip-higher (Yu et al. 2025, sec. 3.1: 0.2 / 0.28): a token with A > 0 and a
    small probability may grow further before its gradient is cut, which slows entropy collapse.
    With old_logps = policy_logps.detach() (one on-policy update) ratio = 1, nothing clips, and
    the gradient is the plain policy gradient -A * grad log pi / normalizer.
    `weights` (B, T), optional: a per-token factor on the loss, e.g. truncated importance weights
    min(pi_trainer / pi_sampler, cap) when the tokens were sampled by another engine (Yao et al. 2025).
    Metrics (token means over `mask`, local): clipfrac = share of tokens where the
    clipped term is the active one; approx_kl = k3 estimate of KL(old || new) = (ratio - 1) - log ratio.
    """
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    log_ratio = (policy_logps - old_logps) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + eps_high)
    per_token = torch.maximum(unclipped, clipped)
    if weights is not None:
        per_token = per_token * weights
    loss = aggregate(per_token, mask, mode, normalizer)
    with torch.no_grad():
        metrics = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, metrics


def kl_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    estimator: str = "k3",
    normalizer: float | None = None,
    mode: str = "token_mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """beta * KL(pi || pi_ref) as a loss term rather than a reward penalty (GRPO, Shao et al. 2024,
    eq. 3-4, with the k3 estimator pi_ref/pi - log(pi_ref/pi) - 1, unbiased and >= 0).

    All (B, T). Reduced with the same `mask`, `mode` and `normalizer` as `policy_loss`, and every
    mode is linear in the per-token values, so `policy_loss + kl_loss` is the aggregate of the
    per-token sum, as in the paper. The gradient flows through policy_logps:
    d k3 / d policy_logps = 1 - pi_ref / pi. Metric `kl`: local token mean of the estimate.
    """
    kl = kl_per_token(policy_logps, ref_logps, mask, estimator)
    loss = beta * aggregate(kl, mask, mode, normalizer)
    return loss, {"kl": masked_mean(kl.detach(), mask)}


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    normalizer: float | None = None,
    mode: str = "token_mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (lm-human-preferences `train_policy.py`, PPO2 baselines):

        V_clip = old_values + clip(values - old_values, -eps, eps)
        L = 0.5 * max((values - returns)^2, (V_clip - returns)^2)

    All (B, T). clipfrac = share of tokens where the clipped error is the larger one.
    """
    v_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    err = (values - returns) ** 2
    err_clipped = (v_clipped - returns) ** 2
    per_token = 0.5 * torch.maximum(err, err_clipped)
    loss = aggregate(per_token, mask, mode, normalizer)
    with torch.no_grad():
        metrics = {"clipfrac": masked_mean((err_clipped > err).float(), mask)}
    return loss, metrics


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var[returns - values] / Var[returns] over masked tokens: 1 = perfect critic,
    0 = no better than a constant, negative = worse. NaN-free: 0 when Var[returns] is 0."""
    mask = mask.to(values.dtype)
    var_r = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    diff = returns - values
    var_d = masked_mean((diff - masked_mean(diff, mask)) ** 2, mask)
    return torch.where(var_r > 0, 1.0 - var_d / var_r.clamp(min=1e-12), torch.zeros_like(var_r))


# ----------------------------------------------------------------------------- adaptive beta


def adaptive_beta(beta: float, kl: float, target: float, horizon: int, n_steps: int) -> float:
    """One step of the lm-human-preferences adaptive KL controller (Ziegler et al. 2019, eq. 3):

        error = clip(kl / target - 1, -0.2, 0.2)
        beta <- beta * (1 + error * n_steps / horizon)

    `n_steps` = episodes in this batch, `horizon` in episodes. A proportional controller: beta
    grows by at most 20% * n_steps / horizon per update when KL is above target.
    """
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return beta * (1.0 + error * n_steps / horizon)
