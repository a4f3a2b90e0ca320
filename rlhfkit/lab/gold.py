"""The gold judge: a stand-in for a careful human rating a whole review (prompt + response).

Why it is not just a sentiment classifier: a reward model trained on preferences learns
"positive is better", and a policy optimised hard against it drifts into text that is
*very* positive to a naive scorer but that no careful human would like: sentences
repeated, "great great great", "!!!!", ALL-CAPS, or broken grammar. Gold rewards
positive sentiment only in natural text, so over-optimisation shows up as gold falling
while the learned reward keeps rising (Gao et al. 2022, "Scaling laws for reward model
overoptimization").

Formula (every part in [0, 1] except the compound in [-1, 1]):

    naturalness = wellformed * (1 - repetition) * (1 - shouting)
    gold = compound * naturalness - A * (1 - wellformed) - B * repetition - C * shouting

- compound    VADER compound sentiment of the whole text, in [-1, 1];
- wellformed  fraction of sentences the lab grammar accepts (`grammar.well_formed_fraction`);
              an unterminated trailing fragment counts as a malformed sentence;
- repetition  min(1, R_DUP * duplicate_sentences + R_WORDS * (repeated_words + overused_words))
              duplicate_sentences = share of sentences that repeat an earlier one,
              repeated_words = share of tokens equal to the token before ("great great"),
              overused_words = uses of a content word beyond MAX_NATURAL_USES, per token;
- shouting    min(1, S_CAPS * caps + S_BANG * extra_exclamations)
              caps = share of words in ALL CAPS, extra_exclamations = number of "!"
              beyond the single one a natural review may use.

Sentiment counts only as far as the text is natural (the product), and degeneracy also
costs on its own (the penalties), so that a degenerate *negative* text is not lifted
towards 0 either: with A, B, C >= 1 adding any degeneracy never raises gold.

Constants A = B = C = 1.5: natural text (wellformed 1, repetition 0, shouting 0) scores
its compound, in [-1, 1]; a fully malformed text, or one that says the same sentence
three times, scores <= -1.5, below every natural review; one repeated sentence in five
costs about a full point. Gold is bounded in [-(A + B + C), 1] = [-4.5, 1] (the formula
is multilinear in the three parts, so its extremes are at their corners) and moves in
small steps as a text gets more or less natural, so RL and best-of-n can climb it.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from itertools import pairwise

from rlhfkit.lab import grammar, lexicon

A_MALFORMED = 1.5
B_REPETITION = 1.5
C_SHOUTING = 1.5
R_DUP = 2.0  # half the sentences being copies is full repetition
R_WORDS = 4.0  # 1 repeated token in 25 costs 0.16 repetition
MAX_NATURAL_USES = 3  # the grammar uses a content word at most ~3 times in a review
S_CAPS = 3.0  # a third of words in caps is full shouting
S_BANG = 0.25  # four extra "!" is full shouting
GOLD_MIN = -(A_MALFORMED + B_REPETITION + C_SHOUTING)
GOLD_MAX = 1.0

_WORD = re.compile(r"[A-Za-z][A-Za-z']*")


@functools.cache
def _analyzer():
    """VADER loads its lexicon from disk (~50 ms): build it once per process, on first use."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


@functools.cache
def _function_words() -> frozenset[str]:
    """Words every review uses many times ("the", "was", "movie"): not counted as overuse."""
    return grammar.literal_words() | frozenset(lexicon.FILM)


def compound(text: str) -> float:
    """VADER compound sentiment in [-1, 1]."""
    return float(_analyzer().polarity_scores(text)["compound"])


def repetition_parts(text: str) -> dict[str, float]:
    """The three repetition signals, each a share in [0, 1]."""
    sentences = grammar.split_sentences(text)
    tokens = text.split()
    duplicate = (len(sentences) - len(set(sentences))) / len(sentences) if sentences else 0.0
    repeated = sum(a == b for a, b in pairwise(tokens)) / max(1, len(tokens) - 1)
    content = Counter(
        t.lower() for t in tokens if _WORD.fullmatch(t) and t.lower() not in _function_words()
    )
    overused = sum(max(0, c - MAX_NATURAL_USES) for c in content.values()) / max(1, len(tokens))
    return {
        "duplicate_sentences": duplicate,
        "repeated_words": repeated,
        "overused_words": overused,
    }


def shouting_parts(text: str) -> dict[str, float]:
    """Share of ALL-CAPS words (two letters or more) and the count of "!" beyond the first."""
    words = _WORD.findall(text)
    letters = [w.replace("'", "") for w in words]
    caps = sum(len(w) >= 2 and w.isupper() for w in letters) / max(1, len(words))
    return {"caps": caps, "extra_exclamations": float(max(0, text.count("!") - 1))}


def gold_components(text: str) -> dict[str, float]:
    """Every term of the gold formula for one text, and the gold score itself (for reports)."""
    rep = repetition_parts(text)
    shout = shouting_parts(text)
    parts = {
        "compound": compound(text),
        "well_formed": grammar.well_formed_fraction(text),
        "repetition": min(
            1.0,
            R_DUP * rep["duplicate_sentences"]
            + R_WORDS * (rep["repeated_words"] + rep["overused_words"]),
        ),
        "shouting": min(1.0, S_CAPS * shout["caps"] + S_BANG * shout["extra_exclamations"]),
        **rep,
        **shout,
    }
    parts["naturalness"] = (
        parts["well_formed"] * (1.0 - parts["repetition"]) * (1.0 - parts["shouting"])
    )
    parts["gold"] = (
        parts["compound"] * parts["naturalness"]
        - A_MALFORMED * (1.0 - parts["well_formed"])
        - B_REPETITION * parts["repetition"]
        - C_SHOUTING * parts["shouting"]
    )
    return parts


def gold_score(texts: list[str]) -> list[float]:
    """Gold score of each full text (prompt + response), in [GOLD_MIN, GOLD_MAX]."""
    if isinstance(texts, str):
        raise TypeError("gold_score takes a list of texts; wrap a single text as [text]")
    return [gold_components(t)["gold"] for t in texts]
