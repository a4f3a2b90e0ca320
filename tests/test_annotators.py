"""The annotator interface and the simulated (gold-driven Plackett-Luce) annotator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhfkit.feedback.base import Annotator, Judgement
from rlhfkit.feedback.simulated import (
    SimulatedAnnotator,
    agreement_with_gold,
    plackett_luce_sample,
)
from rlhfkit.lab.gold import gold_score

PROMPT = "this movie"
RESPONSES = [
    " was really boring . the acting was terrible .",  # natural negative
    " was really wonderful . the acting was brilliant .",  # natural positive
    " is AMAZING!!! AMAZING!!!",  # shouting
    " was quite good . the plot was dull .",  # mixed
]


def gold_order(prompt, responses):
    gold = gold_score([prompt + r for r in responses])
    return sorted(range(len(responses)), key=lambda i: (-gold[i], i))


# ------------------------------------------------------------------- Judgement


def test_judgement_validates_its_fields():
    Judgement(ranking=[1, 0], scores=[0.1, 0.2], soft_label=0.3)
    with pytest.raises(ValueError):
        Judgement(ranking=[0, 0], scores=None)  # not a permutation
    with pytest.raises(ValueError):
        Judgement(ranking=[0, 2], scores=None)
    with pytest.raises(ValueError):
        Judgement(ranking=[0, 1], scores=[1.0])  # scores length
    with pytest.raises(ValueError):
        Judgement(ranking=[0, 1, 2], scores=None, soft_label=0.5)  # soft label needs K=2
    with pytest.raises(ValueError):
        Judgement(ranking=[0, 1], scores=None, soft_label=1.5)
    j = Judgement(ranking=[2, 0, 1], scores=None)
    assert (j.best, j.worst) == (2, 1)


def test_simulated_annotator_is_an_annotator():
    annotator = SimulatedAnnotator()
    assert isinstance(annotator, Annotator)
    assert annotator.name == "simulated"


# ------------------------------------------------------------------- simulated


def test_ranking_is_a_permutation_with_gold_scores():
    annotator = SimulatedAnnotator(temperature=0.5, flip_rate=0.5, seed=3)
    for _ in range(50):
        j = annotator.rank(PROMPT, RESPONSES)
        assert sorted(j.ranking) == list(range(len(RESPONSES)))
        assert j.scores == pytest.approx(gold_score([PROMPT + r for r in RESPONSES]))
        assert j.soft_label is None


def test_same_seed_same_judgements():
    def run(seed):
        annotator = SimulatedAnnotator(temperature=1.0, flip_rate=0.3, seed=seed)
        return [annotator.rank(PROMPT, RESPONSES).ranking for _ in range(30)]

    assert run(0) == run(0)
    assert run(0) != run(1)


def test_zero_temperature_gives_gold_order():
    annotator = SimulatedAnnotator(temperature=0.0, seed=0)
    expected = gold_order(PROMPT, RESPONSES)
    assert expected[0] == 1 and expected[-1] == 2  # positive first, shouting last
    assert all(annotator.rank(PROMPT, RESPONSES).ranking == expected for _ in range(20))


def test_low_temperature_approaches_gold_order():
    annotator = SimulatedAnnotator(temperature=1e-3, seed=0)
    expected = gold_order(PROMPT, RESPONSES)
    assert all(annotator.rank(PROMPT, RESPONSES).ranking == expected for _ in range(20))


def test_flip_rate_statistics():
    """At T=0 only flips disturb the gold order: the disturbed share estimates flip_rate
    (n=1500: binomial sd = sqrt(.3*.7/1500) = 0.012, tolerance 4 sd)."""
    annotator = SimulatedAnnotator(temperature=0.0, flip_rate=0.3, seed=0)
    expected = gold_order(PROMPT, RESPONSES)
    rankings = [annotator.rank(PROMPT, RESPONSES).ranking for _ in range(1500)]
    flipped = [r for r in rankings if r != expected]
    assert abs(len(flipped) / len(rankings) - 0.3) < 0.048
    for r in flipped:  # exactly one adjacent pair swapped
        diff = [i for i in range(len(r)) if r[i] != expected[i]]
        assert len(diff) == 2 and diff[1] == diff[0] + 1


def test_pairwise_preference_is_bradley_terry():
    """K=2 Plackett-Luce is Bradley-Terry: P(0 first) = sigmoid((s0 - s1)/T) = sigmoid(1)
    = 0.7311 for s = (0.1, 0), T = 0.1 (n=4000: sd 0.007, tolerance 4 sd)."""
    rng = np.random.default_rng(0)
    firsts = [plackett_luce_sample(np.array([0.1, 0.0]), 0.1, rng)[0] for _ in range(4000)]
    p0 = firsts.count(0) / len(firsts)
    assert abs(p0 - 1 / (1 + math.exp(-1))) < 0.028


def test_first_choice_is_softmax():
    """Plackett-Luce picks the top item with probability softmax(scores/T)
    (n=6000: sd <= 0.0065, tolerance 0.03)."""
    scores, temperature = np.array([1.0, 0.5, 0.0]), 0.5
    expected = np.exp(scores / temperature) / np.exp(scores / temperature).sum()
    rng = np.random.default_rng(1)
    firsts = np.array([plackett_luce_sample(scores, temperature, rng)[0] for _ in range(6000)])
    observed = np.bincount(firsts, minlength=3) / len(firsts)
    assert np.abs(observed - expected).max() < 0.03


def test_single_response_and_empty_input():
    assert SimulatedAnnotator().rank(PROMPT, [" was good ."]).ranking == [0]
    with pytest.raises(ValueError):
        SimulatedAnnotator().rank(PROMPT, [])
    with pytest.raises(ValueError):
        SimulatedAnnotator(temperature=-1.0)
    with pytest.raises(ValueError):
        SimulatedAnnotator(flip_rate=1.5)


def test_agreement_with_gold():
    """Gold order of RESPONSES is [1, 3, 0, 2]; reversing it disagrees on all 6 pairs,
    swapping the top two disagrees on 1 of 6."""
    best_first = gold_order(PROMPT, RESPONSES)
    assert best_first == [1, 3, 0, 2]
    assert agreement_with_gold(PROMPT, RESPONSES, best_first) == 1.0
    assert agreement_with_gold(PROMPT, RESPONSES, best_first[::-1]) == 0.0
    assert agreement_with_gold(PROMPT, RESPONSES, [3, 1, 0, 2]) == pytest.approx(5 / 6)
    tied = [" was really good .", " was really good ."]
    assert agreement_with_gold(PROMPT, tied, [1, 0]) == 0.5
    assert agreement_with_gold(PROMPT, RESPONSES[:1], [0]) == 1.0
