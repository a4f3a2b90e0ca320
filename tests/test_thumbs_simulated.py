"""Simulated thumbs annotators on the lab: P(up) = σ((gold − threshold)/T), then flips.

Statistical checks: n independent labels with success probability p give a count whose sd is
sqrt(p(1 − p)/n) as a rate; each check allows 4.5 sd (a correct annotator fails one with
probability < 1e-5 under the normal approximation; the seeds are fixed, so runs are repeatable).
"""

from __future__ import annotations

import math

import pytest

from rlhfkit.config import ConfigError
from rlhfkit.data import Feedback, read_records
from rlhfkit.feedback.base import Thumbs, ThumbsAnnotator
from rlhfkit.feedback.registry import build_annotator
from rlhfkit.feedback.simulated import SimulatedThumbs, simulate_thumbs
from rlhfkit.lab.gold import gold_score

PROMPT = "this movie"
RESPONSES = [
    " was really boring . the acting was terrible .",  # gold -0.690
    " was really wonderful . the acting was brilliant .",  # gold 0.831
    " is AMAZING!!! AMAZING!!!",  # gold -4.5
    " was quite good . the plot was dull .",  # gold 0.126
]


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def up_rate(thumbs: list[Thumbs]) -> float:
    return sum(t.label for t in thumbs) / len(thumbs)


def bound(p: float, n: int) -> float:
    return 4.5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("margin", [-2.0, -0.5, 0.0, 1.0, 2.5])
def test_up_rate_follows_the_logistic_of_the_gold_margin(margin):
    """The bar set `margin` temperatures below a response's gold: P(up) = σ(margin)
    (n = 4000: 4.5 sd <= 0.036)."""
    n, temperature = 4000, 0.2
    gold = gold_score([PROMPT + RESPONSES[1]])[0]
    thumbs = simulate_thumbs([PROMPT] * n, [RESPONSES[1]] * n, threshold=gold - margin * temperature,
                             temperature=temperature, seed=7)
    assert thumbs[0].score == pytest.approx(gold) and thumbs[0].p_up == pytest.approx(sigmoid(margin))
    assert abs(up_rate(thumbs) - sigmoid(margin)) < bound(sigmoid(margin), n)


def test_up_rate_per_response_follows_its_gold():
    """One bar (0), T = 0.5: expected rates σ(gold/0.5) = 0.201, 0.841, 1.2e-4, 0.563 for the
    four responses, labelled interleaved in one batch (n = 3000 each: 4.5 sd <= 0.041). The
    shouting response expects 0.37 thumbs up in 3000 (Poisson): more than 4 has P < 1e-4."""
    n = 3000
    thumbs = simulate_thumbs([PROMPT] * (4 * n), RESPONSES * n, threshold=0.0, temperature=0.5, seed=3)
    expected = [sigmoid(g / 0.5) for g in gold_score([PROMPT + r for r in RESPONSES])]
    assert [round(p, 3) for p in expected] == [0.201, 0.841, 0.0, 0.563]
    for i in (0, 1, 3):
        assert abs(up_rate(thumbs[i::4]) - expected[i]) < bound(expected[i], n)
    assert sum(t.label for t in thumbs[2::4]) <= 4


def test_flip_rate_and_zero_temperature():
    """T = 0 labels by gold > threshold exactly; flips then turn a share f of labels over:
    above the bar P(up) = 1 − f = 0.8, below it f = 0.2 (n = 3000: 4.5 sd = 0.033).
    With T = 0.2 and a margin of 1 temperature, P(up) = 0.8·σ(1) + 0.2·σ(−1) = 0.6387."""
    n = 3000
    exact = simulate_thumbs([PROMPT] * 4, RESPONSES, threshold=0.126, temperature=0.0)
    assert [t.label for t in exact] == [False, True, False, True]  # 0.1263 > 0.126 > -0.69
    above = simulate_thumbs([PROMPT] * n, [RESPONSES[1]] * n, threshold=0.0, temperature=0.0, flip_rate=0.2, seed=1)
    below = simulate_thumbs([PROMPT] * n, [RESPONSES[0]] * n, threshold=0.0, temperature=0.0, flip_rate=0.2, seed=2)
    assert abs(up_rate(above) - 0.8) < bound(0.8, n) and abs(up_rate(below) - 0.2) < bound(0.2, n)
    gold = gold_score([PROMPT + RESPONSES[3]])[0]
    mixed = simulate_thumbs([PROMPT] * n, [RESPONSES[3]] * n, threshold=gold - 0.2, temperature=0.2,
                            flip_rate=0.2, seed=4)
    p = 0.8 * sigmoid(1.0) + 0.2 * sigmoid(-1.0)
    assert p == pytest.approx(0.6387, abs=1e-4) and abs(up_rate(mixed) - p) < bound(p, n)


def test_seeded_and_reproducible():
    def labels(seed, completions):
        return [t.label for t in simulate_thumbs([PROMPT] * len(completions), completions, temperature=2.0,
                                                 flip_rate=0.1, seed=seed)]

    batch = RESPONSES * 50
    assert labels(0, batch) == labels(0, batch)
    assert labels(0, batch) != labels(1, batch)
    # two draws per label whatever happens: label i depends only on response i and the seed
    changed = batch[:-1] + [RESPONSES[2]]
    assert labels(0, changed)[:-1] == labels(0, batch)[:-1]
    one_by_one = SimulatedThumbs(temperature=2.0, flip_rate=0.1, seed=0)
    assert [one_by_one.label(PROMPT, c).label for c in batch] == labels(0, batch)


def test_registered_by_name_and_validated():
    annotator = build_annotator("simulated", {"threshold": 0.2, "seed": 5}, kind="thumbs")
    assert isinstance(annotator, ThumbsAnnotator) and annotator.name == "simulated"
    assert annotator.threshold == 0.2
    with pytest.raises(ConfigError, match="unknown annotator"):
        build_annotator("nobody", kind="thumbs")
    with pytest.raises(ConfigError, match="bad options"):
        build_annotator("simulated", {"temperature_": 1}, kind="thumbs")
    with pytest.raises(ValueError):
        SimulatedThumbs(temperature=-1)
    with pytest.raises(ValueError):
        SimulatedThumbs(flip_rate=2)
    with pytest.raises(ValueError):
        simulate_thumbs(["a"], ["b", "c"])
    with pytest.raises(ValueError):
        Thumbs(label=1)


def test_simulated_labels_make_a_feedback_file(tmp_path):
    """What a collection job writes: one feedback record per judged completion, read back as such."""
    thumbs = simulate_thumbs([PROMPT] * 4, RESPONSES, temperature=0.0)
    rows = [Feedback(PROMPT, c, t.label, annotator="simulated").to_json() for c, t in zip(RESPONSES, thumbs, strict=True)]
    records = read_records(rows, "feedback")
    assert [r.label for r in records] == [False, True, False, True]
