"""Advantage estimators for online RL, one signature, picked by name from `ESTIMATORS`:

    advantages, returns = ESTIMATORS[name](scores, kl, mask, **options)

    scores  (B,)    sequence rewards R(x, y)
    kl      (B, T)  per-token KL estimate of pi_old vs pi_ref on the sampled tokens, 0 on padding
                    (`losses.ppo.kl_per_token`; the estimator k1/k2/k3 is the caller's choice)
    mask    (B, T)  1 on real response tokens (a prefix of each row)
    -> advantages (B, T) and returns (B, T), 0 on padding. `returns` is the per-token return the
       advantage was made from, before any normalisation: the critic's target for "gae", the
       (shaped) sequence reward or reward-to-go for the critic-free methods.

Keyword options; each estimator reads the ones it needs and ignores the rest, so a loop can pass
one set to any of them: `group_size` G, `beta` (KL coefficient when KL is in the reward),
`values` (B, T) (critic, "gae" only), `gamma`, `lam`, `all_reduce` (a sum over processes, e.g.
`lambda t: accelerator.reduce(t, "sum")`, for statistics over the global batch).

Groups: the G responses to one prompt are contiguous rows [k G, (k + 1) G), as TRL and OpenRLHF
lay them out (`repeat_interleave`). Group statistics are local, so a process must hold whole
groups; only the batch-wide statistics (REINFORCE++, whitening) go through `all_reduce`.

GRPO and Dr. GRPO keep KL out of the reward (listed in KL_IN_LOSS): their loop adds
`losses.ppo.kl_loss` (beta * k3 per token) to `policy_loss` instead, and ignores `kl` here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlhfkit.losses.ppo import gae, token_rewards, whiten
from rlhfkit.losses.reduce import AllReduce

Estimate = tuple[torch.Tensor, torch.Tensor]


def _groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) -> (B / G, G), one row per prompt."""
    if group_size < 2:
        raise ValueError(f"group estimators need group_size >= 2, got {group_size}")
    if scores.shape[0] % group_size:
        raise ValueError(f"batch of {scores.shape[0]} responses is not whole groups of {group_size}")
    return scores.view(-1, group_size)


def _on_tokens(per_sequence: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, T): the sequence value on every real token of its row."""
    return per_sequence[:, None] * mask.to(per_sequence.dtype)


def group_mean_baseline(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) r_i - mean_j r_j over each prompt's group."""
    g = _groups(scores, group_size)
    return (g - g.mean(1, keepdim=True)).reshape(-1)


def grpo(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, *, group_size: int, std_eps: float = 1e-4,
         **_) -> Estimate:
    """GRPO outcome supervision (Shao et al. 2024, DeepSeekMath sec. 4.1.2):

        A_i,t = (r_i - mean(r_group)) / (std(r_group) + std_eps)     on every token t of response i

    std is the *unbiased* (Bessel, divide by G - 1) group std, with std_eps added to it: the paper
    does not say which; unbiased is TRL's GRPOTrainer (`nanstd`, scale_rewards="group", eps 1e-4,
    our default) and OpenRLHF's group_norm (`torch.std`, eps 1e-9), so runs compare with theirs. A group whose rewards are
    all equal gets A = 0 (0 / std_eps; keep std_eps > 0). returns = r_i on every token.
    """
    g = _groups(scores, group_size)
    adv = (g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + std_eps)
    return _on_tokens(adv.reshape(-1), mask), _on_tokens(scores, mask)


def dr_grpo(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, *, group_size: int, **_) -> Estimate:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", sec. 3):

        A_i,t = r_i - mean(r_group)

    No division by the group std, which up-weights questions that are nearly always or never
    solved. Its other half is the loss: sum over tokens / a constant (`aggregate` mode
    "constant", normalizer = sequences * max_new_tokens), not each response's own length.
    """
    return _on_tokens(group_mean_baseline(scores, group_size), mask), _on_tokens(scores, mask)


def rloo(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, *, group_size: int, beta: float = 0.0,
         **_) -> Estimate:
    """RLOO (Ahmadian et al. 2024, "Back to Basics"): the whole response is one action, its reward
    the KL-penalised sequence reward R_i = r_i - beta * sum_t kl_i,t, and the baseline of
    response i is the mean reward of the *other* G - 1 responses to the same prompt:

        A_i,t = R_i - (sum_j R_j - R_i) / (G - 1)  =  G / (G - 1) * (R_i - mean(R_group))

    as TRL's RLOOTrainer (which uses k1 for kl). returns = R_i on every token.
    """
    penalised = scores.to(kl.dtype) - beta * (kl * mask).sum(-1)  # (B,)
    g = _groups(penalised, group_size)
    adv = g - (g.sum(1, keepdim=True) - g) / (group_size - 1)
    return _on_tokens(adv.reshape(-1), mask), _on_tokens(penalised, mask)


def reinforce_pp(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, *, beta: float,
                 all_reduce: AllReduce = None, **_) -> Estimate:
    """REINFORCE++ (Hu 2025): no critic, KL in the reward per token, returns to the end, and
    advantages normalised over the whole global batch:

        r_t   = -beta * kl_t  (+ score on the last token)         (`token_rewards`, as PPO)
        G_t   = sum_{s >= t} r_s                                   (gamma = 1; `gae` with V = 0, lam = 1)
        A_t   = (G_t - mean(G)) / std(G)                           over every real token of the global batch

    Mean and (population) variance are OpenRLHF's: over all masked tokens of all processes
    (`all_reduce`), so N processes normalise exactly as one. returns = G (before normalising).
    """
    rewards = token_rewards(scores, kl, mask, beta)
    returns, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma=1.0, lam=1.0)
    return whiten(returns, mask, all_reduce=all_reduce), returns


def reinforce_pp_baseline(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, *, group_size: int,
                          beta: float, all_reduce: AllReduce = None, **_) -> Estimate:
    """REINFORCE++-baseline (Hu 2025; OpenRLHF `reinforce_baseline`): subtract each prompt's group
    mean from the scores first (r_i - mean(r_group)), then exactly `reinforce_pp`. The global
    normalisation replaces GRPO's per-group std."""
    return reinforce_pp(group_mean_baseline(scores, group_size), kl, mask, beta=beta, all_reduce=all_reduce)


def ppo_gae(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, *, values: torch.Tensor, beta: float,
            gamma: float = 1.0, lam: float = 0.95, whiten_rewards: bool = False, whiten_advantages: bool = True,
            all_reduce: AllReduce = None, **_) -> Estimate:
    """PPO with a critic (Ziegler et al. 2019 rewards, Schulman et al. 2016 GAE): per-token KL in
    the reward, optionally whitened (mean kept), GAE against `values`, advantages optionally
    whitened, both whitenings over the global batch. returns = A + V (the critic's target)."""
    rewards = token_rewards(scores, kl, mask, beta)
    if whiten_rewards:
        rewards = whiten(rewards, mask, shift_mean=False, all_reduce=all_reduce)
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    if whiten_advantages:
        advantages = whiten(advantages, mask, all_reduce=all_reduce)
    return advantages, returns


ESTIMATORS: dict[str, Callable[..., Estimate]] = {
    "gae": ppo_gae,
    "grpo": grpo,
    "dr_grpo": dr_grpo,
    "rloo": rloo,
    "reinforce_pp": reinforce_pp,
    "reinforce_pp_baseline": reinforce_pp_baseline,
}
NEEDS_CRITIC = frozenset({"gae"})
# KL is a loss term (losses.ppo.kl_loss), not part of the reward: `kl` and `beta` are ignored here.
KL_IN_LOSS = frozenset({"grpo", "dr_grpo"})
# Need G responses per prompt, contiguous.
GROUPED = frozenset({"grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"})


def uniform_groups(scores: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DAPO's dynamic sampling filter (Yu et al. 2025, sec. 3.2): a group whose G rewards are all
    equal has zero group-relative advantage, gives no gradient, yet still counts in the loss
    normaliser, diluting the others. Returns (keep (B,) bool, False on every row of such a group,
    and the share of groups dropped, a scalar tensor). Equal means exactly equal (verifiable 0/1
    rewards); a reward model's floats rarely tie.
    """
    g = _groups(scores, group_size)
    uniform = (g == g[:, :1]).all(1)  # (B / G,)
    return (~uniform).repeat_interleave(group_size), uniform.to(scores.dtype).mean()
