"""The annotator interfaces every preference source shares (simulated, AI judge, human UI).

Why one interface: comparison collection, reward-model training and iterated RLHF should
not care who ranked the responses, so a simulated human, an LLM judge and a person in a
browser are interchangeable behind `Annotator.rank`. Unpaired feedback (thumbs up/down on one
response, what KTO trains on) has its own interface, `ThumbsAnnotator.label`, for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Judgement:
    """One annotator's verdict on K responses to the same prompt.

    ranking     indices into the responses, best first; always a permutation of range(K).
    scores      per-response scores where the annotator has them (e.g. gold), else None.
    soft_label  K=2 only: P(responses[ranking[0]] is preferred to responses[ranking[1]]), the
                same meaning as `Comparison.soft_label`, for judges that give probabilities
                (the AI judge's token probabilities); None for hard rankings.
    """

    ranking: list[int]
    scores: list[float] | None
    soft_label: float | None = None

    def __post_init__(self) -> None:
        if sorted(self.ranking) != list(range(len(self.ranking))):
            raise ValueError(f"ranking must be a permutation of 0..K-1, got {self.ranking}")
        if self.scores is not None and len(self.scores) != len(self.ranking):
            raise ValueError(
                f"{len(self.scores)} scores for {len(self.ranking)} ranked responses"
            )
        if self.soft_label is not None:
            if len(self.ranking) != 2:
                raise ValueError("soft_label is defined for K=2 comparisons only")
            if not 0.0 <= self.soft_label <= 1.0:
                raise ValueError(f"soft_label must be a probability, got {self.soft_label}")

    @property
    def best(self) -> int:
        return self.ranking[0]

    @property
    def worst(self) -> int:
        return self.ranking[-1]


@runtime_checkable
class Annotator(Protocol):
    """Anything that ranks responses to a prompt. `name` is recorded with each comparison."""

    name: str

    def rank(self, prompt: str, responses: list[str]) -> Judgement: ...


@dataclass(frozen=True)
class Thumbs:
    """One annotator's verdict on a single response (unpaired feedback, as KTO trains on).

    label  True: thumbs up (desirable); False: thumbs down.
    score  the score the verdict was drawn from where the annotator has one (gold), else None.
    p_up   the probability of thumbs up the annotator drew from, where known, else None.
    """

    label: bool
    score: float | None = None
    p_up: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.label, bool):
            raise ValueError(f"label must be True or False, got {self.label!r}")
        if self.p_up is not None and not 0.0 <= self.p_up <= 1.0:
            raise ValueError(f"p_up must be a probability, got {self.p_up}")


@runtime_checkable
class ThumbsAnnotator(Protocol):
    """Anything that gives one response a thumbs up or down. `name` is recorded with each label."""

    name: str

    def label(self, prompt: str, completion: str) -> Thumbs: ...
