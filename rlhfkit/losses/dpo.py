"""Direct preference losses: DPO and its family, as pure functions of sequence log-probs.

Every loss takes the summed response log-probs of a batch of P preference pairs,

    policy_chosen_logps, policy_rejected_logps   (P,)  log pi_theta(y | x), summed over tokens
    ref_chosen_logps,    ref_rejected_logps      (P,)  log pi_ref(y | x), same tokens

plus the keyword options it declares (`DPOLoss.options`: `beta` and e.g. `label_smoothing`), and
returns `(losses (P,), rewards)`: the per-pair loss (the recipe sums it over micro-batches and
divides by the *global* pair count, as `losses.reduce` does for tokens) and the implicit rewards
`(chosen (P,), rejected (P,))` used for the `rewards/*` metrics. `DPO_LOSSES[loss_type]` is the
registry entry: the function and the options it reads, which is all a loss is ever passed (a
config that sets any other option is rejected by `recipes.dpo`); `preference_loss` does the
lookup, the reduction and the metrics in one call.

Notation: the log-ratios  c = log pi(y_w|x) - log pi_ref(y_w|x),  r = log pi(y_l|x) - log pi_ref(y_l|x),
and  h = c - r  (the DPO "logits"). Implicit reward of a response: beta * its log-ratio.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Rewards = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[..., tuple[torch.Tensor, Rewards]]


def _log_ratios(pc, pr, rc, rr) -> tuple[torch.Tensor, torch.Tensor]:
    return pc - rc, pr - rr


def sigmoid_loss(pc, pr, rc, rr, *, beta: float) -> tuple[torch.Tensor, Rewards]:
    """DPO (Rafailov et al. 2023, eq. 7):  L = -log sigma(beta * h).

    The Bradley-Terry likelihood of the preference with the implicit reward beta * log(pi/pi_ref).
    Identical policy and reference give h = 0 and L = log 2 for every beta.
    """
    c, r = _log_ratios(pc, pr, rc, rr)
    return -F.logsigmoid(beta * (c - r)), (beta * c.detach(), beta * r.detach())


def cdpo_loss(pc, pr, rc, rr, *, beta: float, label_smoothing: float) -> tuple[torch.Tensor, Rewards]:
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences"):

        L = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)

    i.e. DPO against a label that is flipped with probability eps. Unlike DPO its minimum is at
    the finite h = log((1-eps)/eps) / beta, so the implicit reward margin stops growing.
    """
    c, r = _log_ratios(pc, pr, rc, rr)
    h = beta * (c - r)
    losses = -(1 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)
    return losses, (beta * c.detach(), beta * r.detach())


def ipo_loss(pc, pr, rc, rr, *, beta: float) -> tuple[torch.Tensor, Rewards]:
    """IPO (Azar et al. 2023, eq. 17), tau = beta:  L = (h - 1/(2 tau))^2.

    A squared loss regresses the log-ratio margin onto a fixed target instead of pushing it to
    infinity, which is IPO's fix for DPO's overfitting on deterministic preferences. h uses the
    sequence (summed) log-probs, as in the paper; TRL divides each log-ratio by its token count.
    """
    c, r = _log_ratios(pc, pr, rc, rr)
    return (c - r - 1.0 / (2.0 * beta)) ** 2, (beta * c.detach(), beta * r.detach())


def hinge_loss(pc, pr, rc, rr, *, beta: float) -> tuple[torch.Tensor, Rewards]:
    """SLiC hinge (Zhao et al. 2023, SLiC-HF eq. 1, margin delta = 1/beta), reference-normalised
    as in RSO (Liu et al. 2023):  L = max(0, 1 - beta h).

    Pairs whose margin already exceeds 1/beta give no gradient.
    """
    c, r = _log_ratios(pc, pr, rc, rr)
    return torch.relu(1.0 - beta * (c - r)), (beta * c.detach(), beta * r.detach())


def simpo_loss(
    pc, pr, rc=None, rr=None, *, beta: float, simpo_gamma: float, chosen_lengths, rejected_lengths
) -> tuple[torch.Tensor, Rewards]:
    """SimPO (Meng et al. 2024, eq. 6), reference-free and length-normalised:

        L = -log sigma( beta/|y_w| log pi(y_w|x) - beta/|y_l| log pi(y_l|x) - gamma )

    The implicit reward is beta times the *average* per-token log-prob, so longer responses are
    not favoured, and gamma is a target margin. `rc`/`rr` are ignored (pass None).
    """
    chosen = beta * pc / chosen_lengths.clamp(min=1)
    rejected = beta * pr / rejected_lengths.clamp(min=1)
    return -F.logsigmoid(chosen - rejected - simpo_gamma), (chosen.detach(), rejected.detach())


@dataclass(frozen=True)
class DPOLoss:
    """One loss of the family and what it reads. `options`: its keyword options, each also a config
    key of the same name (recipes.dpo rejects a config that sets another one away from its
    default); `lengths`: it also takes `chosen_lengths`/`rejected_lengths` (P,) token counts;
    `reference_free`: it never looks at the reference log-probs (no reference pass is needed)."""

    fn: LossFn
    options: tuple[str, ...]
    summary: str  # a few words for `--print-config`
    lengths: bool = False
    reference_free: bool = False


DPO_LOSSES: dict[str, DPOLoss] = {
    "sigmoid": DPOLoss(sigmoid_loss, ("beta",), "DPO"),
    "cdpo": DPOLoss(cdpo_loss, ("beta", "label_smoothing"), "label-smoothed DPO"),
    "ipo": DPOLoss(ipo_loss, ("beta",), "IPO, beta = tau"),
    "hinge": DPOLoss(hinge_loss, ("beta",), "SLiC hinge"),
    "simpo": DPOLoss(simpo_loss, ("beta", "simpo_gamma"), "SimPO, reference-free and length-normalised",
                     lengths=True, reference_free=True),
}
REFERENCE_FREE = frozenset(name for name, loss in DPO_LOSSES.items() if loss.reference_free)


def preference_loss(
    loss_type: str,
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    simpo_gamma: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`DPO_LOSSES[loss_type]` reduced to a scalar: sum over the P pairs / `normalizer`.

    `normalizer` is the pair count of the whole global batch (local P if None), so micro-batch
    losses summed over accumulation steps and processes equal the global mean. Metrics are
    detached *sums* over these P pairs (`rewards/chosen`, `rewards/rejected`, `rewards/margin`,
    `rewards/accuracy`, `pairs`), for the caller to add up and divide by the global count.
    Options the loss does not declare are not passed to it (here they are ignored; a config that
    sets one is an error in recipes.dpo).
    """
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(DPO_LOSSES)}")
    if loss_type not in REFERENCE_FREE and (ref_chosen_logps is None or ref_rejected_logps is None):
        raise ValueError(f"loss_type {loss_type!r} needs reference log-probs")
    loss = DPO_LOSSES[loss_type]
    given = {"beta": beta, "label_smoothing": label_smoothing, "simpo_gamma": simpo_gamma}
    kwargs = {k: given[k] for k in loss.options}  # a loss is passed only what it declares
    if loss.lengths:
        kwargs.update(chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    losses, (chosen, rejected) = loss.fn(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                         ref_rejected_logps, **kwargs)
    denom = normalizer if normalizer is not None else losses.shape[0]
    metrics = {
        "rewards/chosen": chosen.sum(),
        "rewards/rejected": rejected.sum(),
        "rewards/margin": (chosen - rejected).sum(),
        "rewards/accuracy": (chosen > rejected).float().sum(),
        "pairs": losses.new_tensor(float(losses.shape[0])),
    }
    return losses.sum() / denom, metrics

