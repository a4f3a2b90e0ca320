"""Reward sources behind one interface, built from a spec string (or several, weighted).

    source = build_reward("runs/rm/final")          # a trained reward model folder
    source = build_reward("runs/rm_ensemble/final", aggregation="uwo")   # an ensemble
    source = build_reward("lab:gold")               # the lab's gold judge (the PPO-GT baseline)
    source = build_reward("my_pkg.scores:brevity")  # any Python callable of an installed module
    source = build_reward("./scores.py:exact_match")  # or of a file, named by its path
    source = build_reward(["runs/rm/final", "./scores.py:format_ok"], weights=[1.0, 0.5])  # a weighted sum
    out = source(prompts, responses, prompt_ids, response_ids)
    out.rewards  # (N,) float32, CPU;  out.extras  # e.g. {"reward/ensemble_std": 0.3}

`prompts` are prompt records (`data.PromptRecord`) or plain strings. A model reward tokenises a
record the way training did (a conversation through the chat template); the gold judge and
functions see its text.

A callable named as `module:function` or `path/to/file.py:function` is called as
`fn(prompts, responses, **columns)` with two lists of strings, plus, by name, each of the prompt
records' other fields that the function takes as a parameter (a dataset column such as `answer` or
`tests`: one value per response). That is how verifiable, rule-based rewards get their targets.
It returns N numbers (list, tensor or array) or a `RewardOutput`. A function that raises, returns
the wrong number of values or a NaN stops the run with one line naming it (`RewardError`).
Importing it runs that code: name only code you trust (the same rule as trust_remote_code);
`user_code` says where it is looked up (never implicitly in the current folder).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from rlhfkit.config import ConfigError
from rlhfkit.errors import UserError
from rlhfkit.user_code import is_code_spec, load_object


class RewardError(UserError):
    """A reward source that failed on a batch: raised, wrong length, non-finite values."""


@dataclass
class RewardOutput:
    rewards: torch.Tensor  # (N,) float32 on CPU
    extras: dict[str, float] = field(default_factory=dict)  # batch metrics, slash-named


class RewardSource(Protocol):
    name: str

    def __call__(
        self,
        prompts: Sequence[Any],
        responses: list[str],
        prompt_ids: Sequence[Sequence[int]] | None = None,
        response_ids: Sequence[Sequence[int]] | None = None,
    ) -> RewardOutput: ...


def prompt_text(prompt: Any) -> str:
    """The text view of a prompt record (or the string itself)."""
    return prompt if isinstance(prompt, str) else prompt.prompt


def _as_rewards(values, n: int, name: str) -> torch.Tensor:
    try:
        rewards = torch.as_tensor(values, dtype=torch.float32).detach().cpu().reshape(-1)
    except (TypeError, ValueError, RuntimeError) as e:
        raise RewardError(f"reward source {name!r} returned something that is not N numbers ({e})") from None
    if rewards.numel() != n:
        raise RewardError(f"reward source {name!r} returned {rewards.numel()} rewards for {n} responses")
    if not torch.isfinite(rewards).all():
        bad = (~torch.isfinite(rewards)).nonzero().flatten()[:5].tolist()
        raise RewardError(f"reward source {name!r} returned non-finite rewards (at responses {bad})")
    return rewards


# ----------------------------------------------------------------------------- sources


class GoldReward:
    """`lab:gold`: the lab's gold judge on prompt + response text (PPO-GT, the upper baseline)."""

    name = "lab:gold"

    def __call__(self, prompts, responses, prompt_ids=None, response_ids=None) -> RewardOutput:
        from rlhfkit.lab import gold_score

        scores = gold_score([prompt_text(p) + r for p, r in zip(prompts, responses, strict=True)])
        return RewardOutput(_as_rewards(scores, len(prompts), self.name))


class CallableReward:
    """`module:function` or `path/to/file.py:function`: fn(prompts, responses, **columns) -> N
    numbers or a RewardOutput; `columns` are the prompt records' fields the function names."""

    def __init__(self, fn: Callable, name: str):
        self.fn, self.name = fn, name
        params = inspect.signature(fn).parameters.values()
        self.takes_all = any(p.kind is p.VAR_KEYWORD for p in params)
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self.column_names = [p.name for p in positional[2:]] + [p.name for p in params if p.kind is p.KEYWORD_ONLY]
        self.required = {p.name for p in params if p.default is p.empty and p.name in self.column_names}

    @classmethod
    def from_spec(cls, spec: str) -> CallableReward:
        fn = load_object(spec, "reward source")
        if not callable(fn):
            raise ConfigError(f"reward source {spec!r} is not callable")
        return cls(fn, spec)

    def _columns(self, prompts: Sequence[Any]) -> dict[str, list]:
        rows = [dict(getattr(p, "columns", None) or {}) for p in prompts]
        names = set().union(*rows) if self.takes_all else set(self.column_names)
        out = {}
        for name in sorted(names):
            if all(name in r for r in rows):
                out[name] = [r[name] for r in rows]
            elif name in self.required:
                raise RewardError(f"reward function {self.name!r} takes '{name}', but some prompt records "
                                  f"have no '{name}' field")
        return out

    def __call__(self, prompts, responses, prompt_ids=None, response_ids=None) -> RewardOutput:
        columns = self._columns(prompts)
        try:
            out = self.fn([prompt_text(p) for p in prompts], list(responses), **columns)
        except Exception as e:  # user code: any failure is reported as one line naming it
            raise RewardError(f"reward function {self.name!r} raised {type(e).__name__}: {e}") from e
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
        out = self.model.score(list(prompts), list(responses), batch_size=self.batch_size)  # records: template
        extras = {"reward/ensemble_std": out.std.float().mean().item()} if out.members.shape[0] > 1 else {}
        return RewardOutput(_as_rewards(out.rewards, len(prompts), self.name), extras)

    def modules(self) -> list[torch.nn.Module]:
        return list(self.model.members)


class WeightedReward:
    """Several reward sources at once: R = sum_k w_k R_k, each source's batch mean logged as
    `reward/<name>/mean` (extras of every source kept)."""

    def __init__(self, sources: list[RewardSource], weights: Sequence[float]):
        self.sources, self.weights = sources, [float(w) for w in weights]
        self.labels = _short_names([s.name for s in sources])
        self.name = " + ".join(f"{w:g}*{s.name}" for s, w in zip(sources, self.weights, strict=True))

    def __call__(self, prompts, responses, prompt_ids=None, response_ids=None) -> RewardOutput:
        total, extras = torch.zeros(len(prompts)), {}
        for src, w, label in zip(self.sources, self.weights, self.labels, strict=True):
            out = src(prompts, responses, prompt_ids, response_ids)
            total += w * out.rewards
            extras[f"reward/{label}/mean"] = out.rewards.mean().item()
            extras.update(out.extras)
        return RewardOutput(total, extras)

    def modules(self) -> list[torch.nn.Module]:
        return [m for s in self.sources for m in getattr(s, "modules", list)()]


def _short_names(names: list[str]) -> list[str]:
    """Metric-friendly labels: a function's name, a folder's name (its parent for .../final), gold."""
    out = []
    for name in names:
        if name == "lab:gold":
            label = "gold"
        elif is_code_spec(name):
            label = name.rsplit(":", 1)[1]
        else:
            p = Path(name)
            label = p.parent.name if p.name == "final" and p.parent.name else p.name
        label = label or "source"
        out.append(label if label not in out else f"{label}_{len(out)}")
    return out


# ----------------------------------------------------------------------------- building


def build_reward(spec: str | Sequence[str], aggregation: str = "mean", uwo_lambda: float = 1.0,
                 batch_size: int = 64, device: torch.device | str | None = None,
                 weights: Sequence[float] | None = None) -> RewardSource:
    """A reward source from its spec: `lab:gold`, a folder (RM or ensemble), `module:function` or
    `path/to/file.py:function`; a list of specs is their weighted sum (`weights`, default all 1)."""
    if not isinstance(spec, str):
        specs = list(spec)
        if not specs:
            raise ConfigError("reward source: an empty list; name at least one")
        weights = list(weights) if weights is not None else [1.0] * len(specs)
        if len(weights) != len(specs):
            raise ConfigError(f"reward weights: {len(weights)} weights for {len(specs)} reward sources")
        if len(specs) == 1 and weights[0] == 1.0:
            return build_reward(specs[0], aggregation, uwo_lambda, batch_size, device)
        return WeightedReward([build_reward(x, aggregation, uwo_lambda, batch_size, device) for x in specs], weights)
    if weights is not None and list(weights) != [1.0]:
        raise ConfigError("reward weights are for a list of reward sources")
    if spec == "lab:gold":
        return GoldReward()
    if Path(spec).is_dir():
        return ModelReward(spec, aggregation, uwo_lambda, batch_size, device)
    if is_code_spec(spec):
        return CallableReward.from_spec(spec)
    raise ConfigError(f"reward source {spec!r} is neither 'lab:gold', an existing reward-model (or ensemble) folder, "
                      "'module:function' nor 'path/to/file.py:function'")
