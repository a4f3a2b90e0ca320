"""Reward sources behind one interface, built from a spec string.

    source = build_reward("runs/rm/final")          # a trained reward model folder
    source = build_reward("runs/rm_ensemble/final", aggregation="uwo")   # an ensemble
    source = build_reward("lab:gold")               # the lab's gold judge (the PPO-GT baseline)
    source = build_reward("my_pkg.scores:brevity")  # any Python callable of an installed module
    source = build_reward("./scores.py:brevity")    # or of a file, named by its path
    out = source(prompts, responses, prompt_ids, response_ids)
    out.rewards  # (N,) float32, CPU;  out.extras  # e.g. {"reward/ensemble_std": 0.3}

A callable named as `module:function` or `path/to/file.py:function` is called as
`fn(prompts, responses)` with two lists of strings and returns N numbers (list, tensor or array),
or a `RewardOutput`. Importing it runs that code: name only code you trust (the same rule as
trust_remote_code); `user_code` says where it is looked up (never implicitly in the current folder).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from rlhfkit.config import ConfigError
from rlhfkit.user_code import is_code_spec, load_object


@dataclass
class RewardOutput:
    rewards: torch.Tensor  # (N,) float32 on CPU
    extras: dict[str, float] = field(default_factory=dict)  # batch metrics, slash-named


class RewardSource(Protocol):
    name: str

    def __call__(
        self,
        prompts: list[str],
        responses: list[str],
        prompt_ids: Sequence[Sequence[int]] | None = None,
        response_ids: Sequence[Sequence[int]] | None = None,
    ) -> RewardOutput: ...


def _as_rewards(values, n: int, name: str) -> torch.Tensor:
    rewards = torch.as_tensor(values, dtype=torch.float32).detach().cpu().reshape(-1)
    if rewards.numel() != n:
        raise ValueError(f"reward source {name!r} returned {rewards.numel()} rewards for {n} responses")
    if not torch.isfinite(rewards).all():
        raise ValueError(f"reward source {name!r} returned non-finite rewards")
    return rewards


# ----------------------------------------------------------------------------- sources


class GoldReward:
    """`lab:gold`: the lab's gold judge on prompt + response text (PPO-GT, the upper baseline)."""

    name = "lab:gold"

    def __call__(self, prompts, responses, prompt_ids=None, response_ids=None) -> RewardOutput:
        from rlhfkit.lab import gold_score

        scores = gold_score([p + r for p, r in zip(prompts, responses, strict=True)])
        return RewardOutput(_as_rewards(scores, len(prompts), self.name))


class CallableReward:
    """`module:function` or `path/to/file.py:function`: fn(prompts, responses) -> N numbers or a RewardOutput."""

    def __init__(self, fn: Callable, name: str):
        self.fn, self.name = fn, name

    @classmethod
    def from_spec(cls, spec: str) -> CallableReward:
        fn = load_object(spec, "reward source")
        if not callable(fn):
            raise ConfigError(f"reward source {spec!r} is not callable")
        return cls(fn, spec)

    def __call__(self, prompts, responses, prompt_ids=None, response_ids=None) -> RewardOutput:
        out = self.fn(list(prompts), list(responses))
        if isinstance(out, RewardOutput):
            return RewardOutput(_as_rewards(out.rewards, len(prompts), self.name), dict(out.extras))
        return RewardOutput(_as_rewards(out, len(prompts), self.name))


class ModelReward:
    """A trained reward model or ensemble folder, scored through `models.reward.load_reward_model`
    (normalised rewards; an ensemble's members combined by `models.ensemble.aggregate_members`:
    mean, min = worst case, uwo = mean - lambda * var, Coste et al. 2023).

    `reward/ensemble_std` (batch mean of the members' std) is reported for ensembles.
    """

    def __init__(self, path: str | Path, aggregation: str = "mean", uwo_lambda: float = 1.0,
                 batch_size: int = 64, device: torch.device | str | None = None):
        from rlhfkit.models.reward import load_reward_model

        self.name = str(path)
        self.model = load_reward_model(path, device=device, aggregation=aggregation, uwo_lambda=uwo_lambda)
        for m in self.model.members:  # a frozen judge: never trained, never wrapped by accelerate
            m.requires_grad_(False).eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, prompts, responses, prompt_ids=None, response_ids=None) -> RewardOutput:
        out = self.model.score(list(prompts), list(responses), batch_size=self.batch_size)
        extras = {"reward/ensemble_std": out.std.float().mean().item()} if out.members.shape[0] > 1 else {}
        return RewardOutput(_as_rewards(out.rewards, len(prompts), self.name), extras)

    def modules(self) -> list[torch.nn.Module]:
        return list(self.model.members)


# ----------------------------------------------------------------------------- building


def build_reward(spec: str, aggregation: str = "mean", uwo_lambda: float = 1.0,
                 batch_size: int = 64, device: torch.device | str | None = None) -> RewardSource:
    """A reward source from its spec: `lab:gold`, a folder (RM or ensemble), `module:function` or
    `path/to/file.py:function`."""
    if spec == "lab:gold":
        return GoldReward()
    if Path(spec).is_dir():
        return ModelReward(spec, aggregation, uwo_lambda, batch_size, device)
    if is_code_spec(spec):
        return CallableReward.from_spec(spec)
    raise ConfigError(f"reward source {spec!r} is neither 'lab:gold', an existing reward-model (or ensemble) folder, "
                      "'module:function' nor 'path/to/file.py:function'")
