"""The gold judge: natural positive > natural negative > degenerate text, with the
penalties it documents."""

from __future__ import annotations

import random

import pytest

from rlhfkit.lab import grammar
from rlhfkit.lab.gold import (
    GOLD_MAX,
    GOLD_MIN,
    compound,
    gold_components,
    gold_score,
)

POSITIVE = "this movie was really wonderful . the acting was brilliant . i loved every minute of it ."
NEGATIVE = "this movie was really boring . the acting was terrible . i hated every minute of it ."
SEED_EXAMPLE = "Machine learning is AMAZING! It's the BEST thing ever! I'm SO HAPPY to help you!"
DEGENERATE = [
    SEED_EXAMPLE,
    "great great great great !!!!",
    "this movie was really wonderful . this movie was really wonderful . this movie was really wonderful .",
    "this movie was really wonderful ! the acting was brilliant ! i loved every minute of it !",
    "this movie was really WONDERFUL . the acting was BRILLIANT . i loved every minute of it .",
    "this movie was really wonderful wonderful . the acting was brilliant brilliant .",
    "the acting was great great and the ending was",
    "wonderful brilliant amazing superb fantastic .",
]


def test_natural_positive_scores_near_one():
    assert grammar.well_formed_fraction(POSITIVE) == 1.0
    assert gold_score([POSITIVE])[0] > 0.85


def test_natural_negative_is_vader_negative():
    assert gold_score([NEGATIVE])[0] == pytest.approx(compound(NEGATIVE))
    assert gold_score([NEGATIVE])[0] < -0.5


@pytest.mark.parametrize("text", DEGENERATE)
def test_degenerate_text_scores_below_natural_negative(text):
    """Every one of these is VADER-positive, yet a careful human ranks it last."""
    assert compound(text) > 0.5
    assert gold_score([text])[0] < gold_score([NEGATIVE])[0]


def test_seed_example_scores_low():
    parts = gold_components(SEED_EXAMPLE)
    assert parts["well_formed"] == 0.0
    assert parts["shouting"] == 1.0  # four words in caps, three "!"
    assert parts["gold"] < -2.0


def test_components_of_natural_text():
    parts = gold_components(POSITIVE)
    assert parts["well_formed"] == 1.0
    assert parts["repetition"] == 0.0 and parts["shouting"] == 0.0
    assert parts["naturalness"] == 1.0
    assert parts["gold"] == pytest.approx(parts["compound"])


def test_components_follow_the_formula():
    """gold = compound*wf*(1-rep)*(1-shout) - 1.5*(1-wf) - 1.5*rep - 1.5*shout, by hand:

    "wow ! the acting was great . the acting was great . the GREAT"
    sentences: "wow !", "the acting was great ." twice, fragment "the GREAT" -> wf = 3/4;
    duplicate_sentences = 1/4; 13 tokens, no adjacent repeats; content words: wow 1,
    acting 2, great 3 (case-folded) -> no overuse; caps: GREAT is 1 of 11 words;
    one "!" -> no extra. repetition = 2 * 1/4 = 0.5, shouting = 3/11.
    """
    text = "wow ! the acting was great . the acting was great . the GREAT"
    parts = gold_components(text)
    assert parts["well_formed"] == pytest.approx(0.75)
    assert parts["duplicate_sentences"] == pytest.approx(0.25)
    assert parts["repeated_words"] == 0.0 and parts["overused_words"] == 0.0
    assert parts["caps"] == pytest.approx(1 / 11)
    assert parts["extra_exclamations"] == 0.0
    assert parts["repetition"] == pytest.approx(0.5)
    assert parts["shouting"] == pytest.approx(3 / 11)
    naturalness = 0.75 * 0.5 * (1 - 3 / 11)
    assert parts["naturalness"] == pytest.approx(naturalness)
    expected = parts["compound"] * naturalness - 1.5 * 0.25 - 1.5 * 0.5 - 1.5 * 3 / 11
    assert parts["gold"] == pytest.approx(expected)


def test_penalties_grow_step_by_step():
    """More copies of a sentence, more "!", more caps: gold falls each time (RL can climb it)."""
    sentences = POSITIVE.split(" . ") + ["the ending was lovely", "wow !"]
    sentences = [s.rstrip(" .!") + (" !" if s == "wow !" else " .") for s in sentences]
    assert len(set(sentences)) == 5 and grammar.well_formed_fraction(" ".join(sentences)) == 1
    copies = [" ".join([sentences[0]] * n + sentences[n:]) for n in range(1, 5)]
    dup = gold_score(copies)
    assert dup == sorted(dup, reverse=True) and len(set(dup)) == 4
    bangs = [gold_score([POSITIVE[:-1] + "!" * n])[0] for n in range(1, 5)]
    assert bangs == sorted(bangs, reverse=True)
    words = POSITIVE.split()
    caps = [gold_score([" ".join(w.upper() if i < n else w for i, w in enumerate(words))])[0]
            for n in range(0, 4)]
    assert caps == sorted(caps, reverse=True)


def test_gold_is_bounded_and_natural_reviews_span_it():
    rng = random.Random(0)
    texts = [grammar.sample_review(rng) for _ in range(300)] + DEGENERATE + ["", "!!!!!!!!"]
    scores = gold_score(texts)
    assert all(GOLD_MIN <= s <= GOLD_MAX for s in scores)
    natural = scores[:300]
    assert min(natural) < -0.5 and max(natural) > 0.9  # sentiment spreads natural reviews


def test_gold_score_rejects_a_bare_string():
    with pytest.raises(TypeError):
        gold_score(POSITIVE)
    assert gold_score([]) == []
