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
they need (`forward_window`), so padding costs little; the update phase reuses both helpers.

Processes: each samples its contiguous shard of the global batch, one generate call per slice
[k G, (k+1) G) of global positions (G = generate_batch_size), seeded by the slice's first global
position, so N processes sample exactly what one does when G divides the shard size; statistics
that must not depend on sharding (whitening) are taken over the gathered global batch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from rlhfkit.data import pad_batch
from rlhfkit.losses.logprobs import entropy_from_logits, token_logps
from rlhfkit.losses.ppo import whiten
from rlhfkit.models.loading import is_peft
from rlhfkit.models.value import token_values
from rlhfkit.rollout import GenerationBackend, Sample, SamplingParams
from rlhfkit.train.seeds import derive_seed

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
    logits = model(**inputs, **keep).logits[:, -r:]
    return logits.float() / temperature


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
def no_grad_passes(roll: Rollout, policy, ref, critic, micro_batch_size: int, temperature: float, autocast) -> Passes:
    """Old log-probs, reference log-probs, entropy (and values with a critic), micro-batched by length."""
    mask = roll.response_mask
    old, ref_lp, ent = (torch.zeros_like(mask) for _ in range(3))
    values = torch.zeros_like(mask) if critic is not None else None
    with autocast():
        for rows in by_length(roll, torch.arange(roll.size, device=mask.device)).split(micro_batch_size):
            inputs, r = forward_window(roll, rows)
            labels = response_labels(roll, rows, r)
            logits = response_logits(policy, inputs, r, temperature)
            _fill(old, rows, token_logps(logits, labels))
            _fill(ent, rows, entropy_from_logits(logits))
            _fill(ref_lp, rows, token_logps(response_logits(ref, inputs, r, temperature), labels))
            if critic is not None:
                _fill(values, rows, token_values(critic, **inputs)[:, -r:])
    return Passes(old, ref_lp, ent, values * mask if values is not None else None)


# ----------------------------------------------------------------------------- global statistics


def whiten_global(acc, values: torch.Tensor, mask: torch.Tensor, **kw) -> torch.Tensor:
    """`whiten` over the global batch (every process's rows, gathered), returning this process's
    rows: the statistics must not depend on how the batch is sharded. values, mask: (N, R)."""
    if acc.num_processes == 1:
        return whiten(values, mask, **kw)
    n, r = values.shape
    full = whiten(acc.gather(acc.pad_across_processes(values, dim=1)),
                  acc.gather(acc.pad_across_processes(mask, dim=1)), **kw)  # (world * N, R_max)
    return full[acc.process_index * n : (acc.process_index + 1) * n, :r]
