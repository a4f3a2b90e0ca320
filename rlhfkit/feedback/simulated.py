"""A simulated human annotator: ranks responses by the lab's gold judge, with human-like noise.

Why simulate: RLHF experiments need thousands of comparisons with a known truth behind
them, so that reward-model accuracy and over-optimisation can be measured against gold
(Gao et al. 2022 use the same "synthetic labeller" setup).

Noise model, in two parts:
1. Plackett-Luce with logits gold/temperature: the annotator picks the best response with
   probability softmax(gold/T), then the best of the rest, and so on. For K=2 this is
   Bradley-Terry: P(a over b) = sigmoid((gold_a - gold_b)/T). With T=0.1 a gold gap of
   0.1 is ranked correctly 73% of the time and a gap of 0.5 99% of the time; natural
   reviews span about [-1, 1] in gold, so close calls stay noisy like real labels.
   Sampled with the Gumbel-max trick: sorting gold/T + Gumbel noise in decreasing order
   gives an exact Plackett-Luce sample (Yellott 1977).
2. With probability `flip_rate`, one random adjacent pair of the ranking is swapped:
   careless clicks that no amount of gold margin protects against.
"""

from __future__ import annotations

import numpy as np

from rlhfkit.feedback.base import Judgement
from rlhfkit.lab.gold import gold_score

DEFAULT_TEMPERATURE = 0.1


class SimulatedAnnotator:
    """Gold-driven Plackett-Luce annotator; reproducible from its seed.

    temperature  PL temperature on gold; 0 ranks exactly by gold (ties by index).
    flip_rate    probability of one extra adjacent swap per judgement.
    seed         seeds the annotator's own numpy Generator (no global state touched).
    """

    name = "simulated"

    def __init__(
        self, temperature: float = DEFAULT_TEMPERATURE, flip_rate: float = 0.0, seed: int = 0
    ) -> None:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not 0.0 <= flip_rate <= 1.0:
            raise ValueError(f"flip_rate must be in [0, 1], got {flip_rate}")
        self.temperature = temperature
        self.flip_rate = flip_rate
        self.rng = np.random.default_rng(seed)

    def rank(self, prompt: str, responses: list[str]) -> Judgement:
        """Rank `responses` to `prompt`, best first; gold (on prompt + response) as scores."""
        if not responses:
            raise ValueError("rank needs at least one response")
        gold = gold_score([prompt + r for r in responses])
        ranking = plackett_luce_sample(np.asarray(gold), self.temperature, self.rng)
        if len(ranking) > 1 and self.rng.random() < self.flip_rate:
            i = int(self.rng.integers(len(ranking) - 1))
            ranking[i], ranking[i + 1] = ranking[i + 1], ranking[i]
        return Judgement(ranking=ranking, scores=gold)


def plackett_luce_sample(
    scores: np.ndarray, temperature: float, rng: np.random.Generator
) -> list[int]:
    """A ranking (best first) drawn from Plackett-Luce with logits scores/temperature.

    Gumbel-max: argsort of logits + Gumbel(0, 1) noise, decreasing. temperature 0 is the
    noiseless limit: sort by score, ties kept in index order.
    """
    if temperature == 0:
        return [int(i) for i in np.argsort(-scores, kind="stable")]
    keys = scores / temperature + rng.gumbel(size=len(scores))
    return [int(i) for i in np.argsort(-keys, kind="stable")]


def agreement_with_gold(prompt: str, responses: list[str], ranking: list[int]) -> float:
    """Fraction of response pairs that `ranking` orders as gold does (gold ties count 1/2).

    1.0 means the ranking is consistent with gold; for a noiseless annotator this is the
    ceiling a reward model's pairwise accuracy can reach on the same comparisons.
    """
    gold = gold_score([prompt + r for r in responses])
    pairs, agree = 0, 0.0
    for pos, better in enumerate(ranking):
        for worse in ranking[pos + 1 :]:
            pairs += 1
            if gold[better] > gold[worse]:
                agree += 1.0
            elif gold[better] == gold[worse]:
                agree += 0.5
    return agree / pairs if pairs else 1.0
