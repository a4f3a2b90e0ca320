"""The experience layer: one online RL step's data, shared by PPO and the critic-free methods.

    exp = make_experience(actors, shard, params, step, seed, ...)
        y      ~ pi(. | x), cut at the first EOS               (sample_shard -> rollout backend)
        R      = reward(x, y) + missing_eos_penalty * [never ended], clipped    (score)
        old_logps, ref_logps, values, entropy = no-grad passes (values only with a critic)
        kl_t   = per-token KL estimate of pi vs pi_ref on the sampled tokens
        A, returns = estimator(R, kl, values, ...)             (losses.advantages via ESTIMATORS)

A process's rows are [prompt left-padded to P | response right-padded to R] (`Rollout`); every
per-token tensor is (N, R) over response positions with `mask` 1 up to and including the first EOS.
The forward passes run in micro-batches sorted by length (`by_length`) and trimmed to the columns
they need (`forward_window`), so padding costs little; the update phase reuses both helpers. Statistics
that must not depend on sharding (whitening, REINFORCE++'s normalisation) are sums over processes.

Processes: each samples its contiguous shard of the global batch, one generate call per slice
[k G, (k+1) G) of global positions (G = generate_batch_size), seeded by the slice's first global
position, so N processes sample exactly what one does when G divides the shard size.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from rlhfkit.data import pad_batch
from rlhfkit.errors import UserError
from rlhfkit.losses.advantages import ESTIMATORS, KL_IN_LOSS, uniform_groups
from rlhfkit.losses.logprobs import entropy_from_logits, token_logps
from rlhfkit.losses.ppo import explained_variance, kl_per_token, token_rewards
from rlhfkit.losses.reduce import masked_mean
from rlhfkit.models.loading import is_peft
from rlhfkit.models.value import token_values
from rlhfkit.rewards import RewardOutput, RewardSource
from rlhfkit.rollout import GenerationBackend, Sample, SamplingParams
from rlhfkit.train.seeds import derive_seed
from rlhfkit.train.shard import gathered

# ----------------------------------------------------------------------------- rollout rows


@dataclass
class Rollout:
    """One process's rollout batch. Rows are [prompt left-padded to P | response right-padded to R]."""

    input_ids: torch.Tensor  # (N, P + R)
    attention_mask: torch.Tensor  # (N, P + R)
    response_mask: torch.Tensor  # (N, R) 1 on response tokens up to and including the first EOS
    prompt_len: int  # P

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]


def build_rollout(prompt_ids: list[list[int]], response_ids: list[list[int]], pad: int, device) -> Rollout:
    resp = [r if r else [pad] for r in response_ids]  # an empty response still has a slot (masked out)
    prompts = pad_batch(prompt_ids, pad, "left")
    responses = pad_batch(resp, pad, "right")
    p_mask = (torch.arange(prompts.shape[1])[None] >= prompts.shape[1] - torch.tensor([len(p) for p in prompt_ids])[:, None]).long()
    r_mask = (torch.arange(responses.shape[1])[None] < torch.tensor([len(r) for r in response_ids])[:, None]).long()
    return Rollout(torch.cat([prompts, responses], 1).to(device), torch.cat([p_mask, r_mask], 1).to(device),
                   r_mask.float().to(device), prompts.shape[1])


def forward_window(roll: Rollout, rows: torch.Tensor) -> tuple[dict, int]:
    """Model inputs for `rows`, trimmed to the columns they need: from the first real prompt token
    to the second-to-last response token (the last one is predicted, never an input).
    Returns (inputs, r) where the last r positions' outputs belong to response tokens 0..r-1."""
    att = roll.attention_mask[rows]
    P = roll.prompt_len
    p0 = int((att[:, :P].sum(0) > 0).nonzero()[0]) if att[:, :P].any() else P - 1
    r = max(int(roll.response_mask[rows].sum(1).max()), 1)
    ids, att = roll.input_ids[rows, p0 : P + r - 1], att[:, p0 : P + r - 1]
    pos = (att.cumsum(-1) - 1).clamp(min=0)  # = generate's position ids under left padding
    return {"input_ids": ids, "attention_mask": att, "position_ids": pos}, r


def response_logits(model, inputs: dict, r: int, temperature: float) -> torch.Tensor:
    """(n, r, V) logits predicting the response tokens, divided by the sampling temperature.
    `logits_to_keep` skips the LM head on prompt positions where the model supports it."""
    keep = {"logits_to_keep": r} if _keeps_logits(model) else {}
    logits = model(**inputs, **keep).logits[:, -r:].float()
    return logits / temperature if temperature != 1.0 else logits  # x / 1 == x: skip a (n, r, V) pass and its backward


def _keeps_logits(model) -> bool:
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_policy", inner)  # AdapterDisabled
    inner = inner.get_base_model() if is_peft(inner) else inner
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def response_labels(roll: Rollout, rows: torch.Tensor, r: int) -> torch.Tensor:
    labels = roll.input_ids[rows, roll.prompt_len : roll.prompt_len + r]
    return torch.where(roll.response_mask[rows, :r] > 0, labels, torch.full_like(labels, -100))


def by_length(roll: Rollout, rows: torch.Tensor) -> torch.Tensor:
    """`rows` sorted by (response length, prompt length), so consecutive micro-batches hold
    similar lengths and `forward_window` trims most padding. A minibatch's gradient is a sum
    over its micro-batches, so the order does not change it."""
    att = roll.attention_mask[rows]
    key = att[:, roll.prompt_len :].sum(1) * (roll.prompt_len + 1) + att[:, : roll.prompt_len].sum(1)
    return rows[torch.argsort(key, stable=True)]


def _fill(full: torch.Tensor, rows: torch.Tensor, part: torch.Tensor) -> None:
    full[rows, : part.shape[1]] = part.to(full.dtype)


# ----------------------------------------------------------------------------- sampling


def sample_shard(backend: GenerationBackend, prompts: list[list[int]], params: SamplingParams, offset: int, group: int,
                 seed: int, step: int) -> list[Sample]:
    """Samples for this process's prompts, which sit at global batch positions offset, offset+1, ...
    One generate call per slice of `group` global positions (cut at the shard's ends), seeded by
    the slice's first global position, so the samples do not depend on the number of processes
    when `group` divides the shard size."""
    out, i = [], 0
    while i < len(prompts):
        pos = offset + i
        j = min(len(prompts), i + group - pos % group)  # up to the next multiple of `group`
        out += backend.generate(prompts[i:j], params, group, seed=derive_seed(seed, step, pos))
        i = j
    return out


# ----------------------------------------------------------------------------- no-grad passes


@dataclass
class Passes:
    """Per-token outputs of the no-grad forward passes over a rollout, all (N, R), 0 on padding."""

    old_logps: torch.Tensor  # log pi_old(y_t | ...) at the sampling temperature
    ref_logps: torch.Tensor  # log pi_ref(y_t | ...)
    entropy: torch.Tensor  # entropy of pi_old at each response position
    values: torch.Tensor | None  # critic V(s_t); None without a critic


@torch.no_grad()
def no_grad_passes(roll: Rollout, policy, ref, critic, micro_batch_size: int, temperature: float, autocast,
                   policy_pass: bool = True) -> Passes:
    """Old log-probs, reference log-probs, entropy (and values with a critic), micro-batched by length.
    policy_pass=False leaves old log-probs and entropy 0, for the update to fill (`Experience.record_old`)."""
    mask = roll.response_mask
    old, ref_lp, ent = (torch.zeros_like(mask) for _ in range(3))
    values = torch.zeros_like(mask) if critic is not None else None
    with autocast():
        for rows in by_length(roll, torch.arange(roll.size, device=mask.device)).split(micro_batch_size):
            inputs, r = forward_window(roll, rows)
            labels = response_labels(roll, rows, r)
            if policy_pass:
                logits = response_logits(policy, inputs, r, temperature)
                _fill(old, rows, token_logps(logits, labels))
                _fill(ent, rows, entropy_from_logits(logits))
            _fill(ref_lp, rows, token_logps(response_logits(ref, inputs, r, temperature), labels))
            if critic is not None:
                _fill(values, rows, token_values(critic, **inputs)[:, -r:])
    return Passes(old, ref_lp, ent, values * mask if values is not None else None)


# ----------------------------------------------------------------------------- one step's experience


@dataclass
class Actors:
    """The models and sources one online step uses (the trained ones already prepared)."""

    policy: Any
    ref: Any
    critic: Any | None  # PPO's value model; None for the critic-free estimators
    reward: RewardSource
    accelerator: Any
    tokenizer: Any
    backend: GenerationBackend
    judge: RewardSource | None = None  # a held-out judge scoring the rollouts (gold/mean), never trained on


@dataclass(frozen=True)
class ExperienceSpec:
    params: SamplingParams
    group_size: int  # G responses per prompt, contiguous rows
    generate_batch_size: int
    seed: int
    micro_batch_size: int
    missing_eos_penalty: float
    reward_clip: float
    estimator: str
    kl_estimator: str
    gamma: float
    lam: float
    whiten_rewards: bool
    whiten_advantages: bool
    drop_uniform_groups: bool
    is_cap: float
    # One on-policy update (1 epoch, 1 minibatch) with the KL in the loss and no importance weights:
    # nothing before the update needs pi_old, which is the policy the update runs, so its own forward
    # gives old_logps (ratio 1) and entropy, and the no-grad policy pass is skipped (as TRL's GRPO does).
    old_logps_from_update: bool = False


@dataclass
class Experience:
    """One process's rollout batch with everything the update needs; per-token tensors (N, R)."""

    roll: Rollout
    pad_token_id: int
    samples: list[Sample]
    raw: RewardOutput  # the reward source's output (before the EOS penalty and clipping)
    scores: torch.Tensor  # (N,) the sequence reward the estimator saw
    finished: torch.Tensor  # (N,) 1 where the response ended with EOS
    old_logps: torch.Tensor
    ref_logps: torch.Tensor
    entropy: torch.Tensor
    values: torch.Tensor | None
    kl: torch.Tensor  # per-token KL estimate (algo.kl_estimator) of pi_old vs pi_ref
    advantages: torch.Tensor
    returns: torch.Tensor
    loss_mask: torch.Tensor  # response mask without the dropped groups' rows
    dropped: float  # share of groups left out (all rewards equal)
    is_weights: torch.Tensor | None  # truncated importance weights pi_trainer / pi_sampler, or None
    total_reward: float  # mean over responses of the KL-shaped reward (score - beta * sum kl, where KL is in the reward)
    gold: torch.Tensor | None  # (N,) the held-out judge's scores
    old_from_update: bool = False  # old_logps, entropy and kl are filled by the update (ExperienceSpec)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of its parts: time/<part>_s metrics

    def record_old(self, rows: torch.Tensor, logps: torch.Tensor, logits: torch.Tensor) -> None:
        """old_logps and entropy of `rows` from the update's own forward (old_from_update)."""
        _fill(self.old_logps, rows, logps.detach())
        _fill(self.entropy, rows, entropy_from_logits(logits.detach()))

    def finish_old(self, kl_estimator: str) -> None:
        """After the update has recorded every row: the per-token KL the metrics report."""
        self.kl = kl_per_token(self.old_logps, self.ref_logps, self.roll.response_mask, kl_estimator)

    def metrics(self, acc, with_gold: bool = True) -> dict[str, float]:
        """The step's rollout metrics, means over the global batch (equal shards: mean of process means)."""
        mask = self.roll.response_mask
        local = {
            "reward/mean": self.raw.rewards.mean().item(),
            "reward/std": self.raw.rewards.std(unbiased=False).item(),
            "reward/score": self.scores.mean().item(),
            "reward/total": self.total_reward,
            "kl/mean": kl_per_token(self.old_logps, self.ref_logps, mask, "k1").sum(1).mean().item(),  # nats/sequence
            "kl/penalty": self.kl.sum(1).mean().item(),
            "policy/entropy": masked_mean(self.entropy, mask).item(),
            "response/length": mask.sum(1).mean().item(),
            "response/eos_rate": self.finished.mean().item(),
            **self.raw.extras,
            **{f"time/{k}_s": v for k, v in self.seconds.items()},
        }
        if self.values is not None:
            local["value/explained_variance"] = explained_variance(self.values, self.returns, mask).item()
            local["value/mean"] = masked_mean(self.values, mask).item()
        if self.dropped or self.loss_mask is not mask:
            local["groups/dropped"] = self.dropped
        if self.is_weights is not None:
            local["policy/is_weight"] = masked_mean(self.is_weights, mask).item()
        if with_gold and self.gold is not None:
            local["gold/mean"] = self.gold.mean().item()
        if acc.num_processes == 1:
            return local
        keys = sorted(local)
        vec = acc.reduce(torch.tensor([local[k] for k in keys], device=acc.device, dtype=torch.float64), "mean")
        out = dict(zip(keys, vec.tolist(), strict=True))
        # A std is not a mean of per-process stds: from the global sums of r and r^2 (population std).
        r = self.raw.rewards.double()
        n, s1, s2 = acc.reduce(torch.tensor([len(r), r.sum(), (r * r).sum()], device=acc.device, dtype=torch.float64),
                               "sum").tolist()
        out["reward/std"] = max(s2 / n - (s1 / n) ** 2, 0.0) ** 0.5
        return out


def make_experience(actors: Actors, prompts: list, prompt_ids: list[list[int]], offset: int, step: int, beta: float,
                    spec: ExperienceSpec) -> Experience:
    """Sample G responses to each of this process's `prompts` (records, at global response positions
    offset, offset + 1, ...), score them, run the no-grad passes and make the advantages."""
    G, acc = spec.group_size, actors.accelerator
    prompts = [p for p in prompts for _ in range(G)]  # each prompt's G responses, contiguous
    prompt_ids = [p for p in prompt_ids for _ in range(G)]
    clock = [time.perf_counter()]  # wall time of each part (generation ends in .tolist(): synchronised)
    with gathered(actors.policy):  # sharded (train.sharding=fsdp): generation runs on gathered weights
        samples = sample_shard(actors.backend, prompt_ids, spec.params, offset, spec.generate_batch_size, spec.seed, step)
    clock.append(time.perf_counter())
    responses, response_ids = [smp.text for smp in samples], [smp.response_ids for smp in samples]
    try:
        raw = actors.reward(prompts, responses, prompt_ids, response_ids)
    except UserError as e:  # a failing reward function: one line naming it and the batch
        raise type(e)(f"step {step + 1}, responses {offset}..{offset + len(samples) - 1} of the global batch: {e}") from None
    clock.append(time.perf_counter())
    finished = torch.tensor([smp.finished for smp in samples], dtype=torch.float32)
    scores = raw.rewards + spec.missing_eos_penalty * (1.0 - finished)
    if spec.reward_clip > 0:
        scores = scores.clamp(-spec.reward_clip, spec.reward_clip)
    roll = build_rollout(prompt_ids, response_ids, actors.tokenizer.pad_token_id, acc.device)
    passes = no_grad_passes(roll, actors.policy, actors.ref, actors.critic, spec.micro_batch_size,
                            spec.params.temperature, acc.autocast, policy_pass=not spec.old_logps_from_update)
    mask = roll.response_mask
    kl = kl_per_token(passes.old_logps, passes.ref_logps, mask, spec.kl_estimator)  # (N, R)
    scores = scores.to(mask.device)
    advantages, returns = ESTIMATORS[spec.estimator](
        scores, kl, mask, group_size=G, beta=beta, values=passes.values, gamma=spec.gamma, lam=spec.lam,
        whiten_rewards=spec.whiten_rewards, whiten_advantages=spec.whiten_advantages,
        all_reduce=(lambda t: acc.reduce(t, "sum")) if acc.num_processes > 1 else None)
    loss_mask, dropped = mask, 0.0
    if spec.drop_uniform_groups:
        keep, share = uniform_groups(scores, G)
        loss_mask, dropped = mask * keep[:, None].to(mask.dtype), float(share)
    shaped = scores if spec.estimator in KL_IN_LOSS else token_rewards(scores, kl, mask, beta).sum(1)
    clock.append(time.perf_counter())
    gold = actors.judge(prompts, responses).rewards if actors.judge is not None else None
    seconds = {"generate": clock[1] - clock[0], "reward": clock[2] - clock[1], "passes": clock[3] - clock[2]}
    return Experience(roll, actors.tokenizer.pad_token_id, samples, raw, scores, finished.to(mask.device), passes.old_logps, passes.ref_logps,
                      passes.entropy, passes.values, kl, advantages, returns, loss_mask, dropped,
                      importance_weights(samples, passes.old_logps, mask, spec.is_cap), shaped.mean().item(), gold,
                      spec.old_logps_from_update, seconds)


def importance_weights(samples: list[Sample], old_logps: torch.Tensor, mask: torch.Tensor, cap: float) -> torch.Tensor | None:
    """Truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly brings
    you off-policy RL training"): tokens were drawn by the sampler (e.g. vLLM), whose log-probs
    differ from the trainer's by kernel and precision; the update is an expectation under the
    trainer's policy, so each token's loss is weighted by w_t = min(pi_trainer(y_t) / pi_sampler(y_t), cap).
    (N, R), 0 on padding; None when off (cap 0) or the sampler reported no log-probs."""
    if cap <= 0 or any(smp.logprobs is None for smp in samples):
        return None
    sampler = torch.zeros_like(old_logps)
    for i, smp in enumerate(samples):
        n = min(len(smp.logprobs), sampler.shape[1])
        sampler[i, :n] = torch.tensor(smp.logprobs[:n], dtype=sampler.dtype)
    return torch.exp(old_logps - sampler).clamp(max=cap) * mask
