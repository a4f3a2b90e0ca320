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

Thumbs up/down (`SimulatedThumbs`, `simulate_thumbs`): a person with a bar in mind says "good"
when the response clears it. Thumbs up with probability σ((gold − threshold)/T), the logistic
analogue of Bradley-Terry against a fixed bar (T=0: up exactly when gold > threshold), then the
label flips with probability `flip_rate`. Overall P(up) = (1 − f)·σ + f·(1 − σ): a response far
above the bar still gets a thumbs down a share f of the time.
"""

from __future__ import annotations

import math

import numpy as np

from rlhfkit.feedback.base import Judgement, Thumbs

DEFAULT_TEMPERATURE = 0.1
GOLD = "lab:gold"  # the judge simulated annotators follow by default: the lab's gold judge


def _scores(judge: str, prompts: list[str], responses: list[str]) -> list[float]:
    """The judge's score of each (prompt, response): a reward source spec (rewards.build_reward)."""
    from rlhfkit.rewards import build_reward

    return build_reward(judge)(prompts, responses).rewards.tolist()


class SimulatedAnnotator:
    """Gold-driven Plackett-Luce annotator; reproducible from its seed.

    temperature  PL temperature on gold; 0 ranks exactly by gold (ties by index).
    flip_rate    probability of one extra adjacent swap per judgement.
    seed         seeds the annotator's own numpy Generator (no global state touched).
    """

    name = "simulated"

    def __init__(
        self, temperature: float = DEFAULT_TEMPERATURE, flip_rate: float = 0.0, seed: int = 0, judge: str = GOLD
    ) -> None:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not 0.0 <= flip_rate <= 1.0:
            raise ValueError(f"flip_rate must be in [0, 1], got {flip_rate}")
        self.temperature = temperature
        self.flip_rate = flip_rate
        self.judge = judge
        self.rng = np.random.default_rng(seed)

    def rank(self, prompt: str, responses: list[str]) -> Judgement:
        """Rank `responses` to `prompt`, best first; gold (on prompt + response) as scores."""
        if not responses:
            raise ValueError("rank needs at least one response")
        gold = _scores(self.judge, [prompt] * len(responses), list(responses))
        ranking = plackett_luce_sample(np.asarray(gold), self.temperature, self.rng)
        if len(ranking) > 1 and self.rng.random() < self.flip_rate:
            i = int(self.rng.integers(len(ranking) - 1))
            ranking[i], ranking[i + 1] = ranking[i + 1], ranking[i]
        return Judgement(ranking=ranking, scores=gold)


class SimulatedThumbs:
    """Gold-driven thumbs annotator (logistic around a bar, plus flips); reproducible from its seed.

    threshold    the gold score of a response that is just acceptable (P(up) = 1/2 there).
    temperature  logistic width on gold; 0 labels exactly by gold > threshold.
    flip_rate    probability that the drawn label is flipped (careless clicks).
    seed         seeds the annotator's own numpy Generator (no global state touched).
    Each label draws two uniforms (label, flip) whatever the settings, so the i-th label of a
    seed depends only on the i-th response.
    """

    name = "simulated"

    def __init__(self, threshold: float = 0.0, temperature: float = DEFAULT_TEMPERATURE,
                 flip_rate: float = 0.0, seed: int = 0, judge: str = GOLD) -> None:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not 0.0 <= flip_rate <= 1.0:
            raise ValueError(f"flip_rate must be in [0, 1], got {flip_rate}")
        self.threshold, self.temperature, self.flip_rate = float(threshold), temperature, flip_rate
        self.judge = judge
        self.rng = np.random.default_rng(seed)

    def p_up(self, gold: float) -> float:
        """P(thumbs up) before flips: σ((gold − threshold)/T), a step at T = 0."""
        margin = gold - self.threshold
        if self.temperature == 0:
            return float(margin > 0)
        z = margin / self.temperature
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))  # no overflow

    def label(self, prompt: str, completion: str) -> Thumbs:
        """Thumbs up or down for one completion; gold (on prompt + completion) as its score."""
        return self.label_many([prompt], [completion])[0]

    def label_many(self, prompts: list[str], completions: list[str]) -> list[Thumbs]:
        """`label` for each (prompt, completion) in order; gold is scored in one call."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        gold = _scores(self.judge, list(prompts), list(completions))
        out = []
        for g in gold:
            p, (u_label, u_flip) = self.p_up(g), self.rng.random(2)
            out.append(Thumbs(label=bool((u_label < p) != (u_flip < self.flip_rate)), score=g, p_up=p))
        return out


def simulate_thumbs(prompts: list[str], completions: list[str], *, threshold: float = 0.0,
                    temperature: float = DEFAULT_TEMPERATURE, flip_rate: float = 0.0, seed: int = 0) -> list[Thumbs]:
    """Simulated thumbs for each (prompt, completion): see `SimulatedThumbs` for the noise model."""
    annotator = SimulatedThumbs(threshold=threshold, temperature=temperature, flip_rate=flip_rate, seed=seed)
    return annotator.label_many(prompts, completions)


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
    gold = _scores(GOLD, [prompt] * len(responses), list(responses))
    pairs, agree = 0, 0.0
    for pos, better in enumerate(ranking):
        for worse in ranking[pos + 1 :]:
            pairs += 1
            if gold[better] > gold[worse]:
                agree += 1.0
            elif gold[better] == gold[worse]:
                agree += 0.5
    return agree / pairs if pairs else 1.0
