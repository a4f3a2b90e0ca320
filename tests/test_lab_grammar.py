"""The lab grammar: generator and recogniser agree, reviews have the promised shape,
prompts split cleanly, and everything is reproducible from a seed."""

from __future__ import annotations

import random
import re

import pytest

from rlhfkit.lab import corpus, grammar, lexicon
from rlhfkit.lab.gold import compound


@pytest.fixture(scope="module")
def reviews() -> list[str]:
    rng = random.Random(0)
    return [grammar.sample_review(rng) for _ in range(1000)]


def test_every_generated_review_is_well_formed(reviews):
    bad = [r for r in reviews if grammar.well_formed_fraction(r) != 1.0]
    assert bad == []


def test_generated_reviews_are_well_formed_at_every_positivity():
    rng = random.Random(1)
    for positivity in (0.0, 0.3, 1.0):
        for _ in range(200):
            assert grammar.well_formed_fraction(grammar.sample_review(rng, positivity)) == 1.0


def test_review_format(reviews):
    for r in reviews:
        assert r == r.lower() and r == r.strip() and "  " not in r
        assert re.fullmatch(r"[a-z]+( [a-z]+| [.,!])*", r), r
        assert 2 <= len(grammar.split_sentences(r)) <= 5
        assert r.count("!") <= 1  # a natural review exclaims at most once
        sentences = grammar.split_sentences(r)
        assert len(set(sentences)) == len(sentences)


def test_grammar_is_large_enough():
    assert len(grammar.vocabulary()) >= 300
    assert len(grammar.TEMPLATES) >= 20
    assert "!" in grammar.vocabulary()
    assert sum(t.opening for t in grammar.TEMPLATES) >= 5


def test_positivity_biases_sentiment():
    def mean_compound(positivity):
        rng = random.Random(2)
        return sum(compound(grammar.sample_review(rng, positivity)) for _ in range(200)) / 200

    neg, mid, pos = mean_compound(0.0), mean_compound(0.5), mean_compound(1.0)
    assert neg < -0.4 < mid < 0.4 < pos


def test_frequent_positive_adjectives():
    """Zipf-like sampling: the first positive adjective is far more common than the last."""
    rng = random.Random(3)
    text = " ".join(grammar.sample_review(rng, 1.0) for _ in range(500)).split()
    assert text.count(lexicon.ADJ_POS[0]) > 10 * max(1, text.count(lexicon.ADJ_POS[-1]))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", 0.0),
        ("the acting was great .", 1.0),
        ("the acting was great . the acting was", 0.5),  # unterminated fragment
        ("the acting was great .  ", 1.0),  # trailing space is not a fragment
        ("the acting was great", 0.0),
        ("the acting was the .", 0.0),
        ("The acting was great .", 0.0),  # case matters
        ("the acting was  great .", 0.0),  # tokens separated by one space
        ("the acting was great.", 0.0),  # punctuation is its own token
        ("wow ! the acting was great .", 1.0),
        ("wow !!", 0.5),  # "wow !" then a lone "!"
        ("it was great , ugly and horrible .", 1.0),  # recognition is syntactic
    ],
)
def test_well_formed_fraction(text, expected):
    assert grammar.well_formed_fraction(text) == pytest.approx(expected)


def test_split_prompt(reviews):
    rng = random.Random(4)
    for r in reviews:
        prompt, response = grammar.split_prompt(r, rng)
        assert prompt + response == r
        assert response.startswith(" ") and not response.startswith("  ")
        assert not prompt.endswith(" ")
        words = prompt.split(" ")
        assert 2 <= len(words) <= grammar.MAX_PROMPT_WORDS
        assert not set(words) & grammar.sentiment_words()  # the response decides the tone
        assert not set(words) & set(grammar.TERMINATORS)  # within the first sentence


def test_same_seed_same_corpus():
    a = corpus.documents("review", 50, seed=7)
    assert a == corpus.documents("review", 50, seed=7)
    assert a != corpus.documents("review", 50, seed=8)
    assert a != corpus.documents("review", 50, seed=7, name="other-stream")
    demos = corpus.documents("demonstration", 20, seed=7)
    assert demos == corpus.documents("demonstration", 20, seed=7)


def test_grammar_accepts_numpy_generator():
    import numpy as np

    review = grammar.sample_review(np.random.default_rng(0))
    assert grammar.well_formed_fraction(review) == 1.0


def test_prompt_splits_are_disjoint():
    train, held_out = corpus.prompt_splits(3000, seed=0)
    assert train and held_out
    assert not set(train) & set(held_out)
    assert len(set(train)) == len(train)
    assert all(corpus.is_eval_prompt(p) for p in held_out)


def test_demonstrations_are_positive_and_well_formed():
    demos = corpus.documents("demonstration", 200, seed=0)
    texts = [d["prompt"] + d["response"] for d in demos]
    assert all(grammar.well_formed_fraction(t) == 1.0 for t in texts)
    assert sum(compound(t) for t in texts) / len(texts) > 0.5
