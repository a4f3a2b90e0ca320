"""The lab's verifiable task (rlhfkit/lab/verifiable.py): prompts that set a sentiment, generated
deterministically on first use into the lab folder and read as lab:verifiable_train / _eval; the rule
reward by hand, through a `module:function` spec that receives the `sentiment` column by name."""

from __future__ import annotations

import json

import pytest

from rlhfkit.data import DataError, read_records
from rlhfkit.lab import grammar, verifiable
from rlhfkit.rewards import build_reward

SPEC = "rlhfkit.lab.verifiable:reward"


@pytest.mark.parametrize("prompt, response, sentiment, ok", [
    ("what a terrible", " movie ! ugh !", "negative", True),  # two template sentences, both negative words
    ("this film made me", " smile . the plot was really great .", "positive", True),
    ("what a terrible", " movie ! the plot was great .", "negative", False),  # a positive word too
    ("what a terrible", " movie !", "negative", False),  # the response itself says nothing
    ("what a terrible", " movie ! bad bad bad .", "negative", False),  # not a sentence of the grammar
    ("what a terrible", " movie ! the plot was bad", "negative", False),  # never finished
    ("this film made me", " smile . the plot was really great .", "negative", False),  # the wrong sentiment
])
def test_the_rule_by_hand(prompt, response, sentiment, ok):
    assert verifiable.success(prompt, response, sentiment) is ok
    assert verifiable.reward([prompt], [response], [sentiment]) == [float(ok)]


def test_mentions_counts_target_words_without_the_grammar():
    """The gameable rule: target-sentiment words of the response, capped, grammar ignored."""
    assert verifiable.mentions(["what a"], [" bad bad terrible great !!"], ["negative"]) == [3.0]
    assert verifiable.mentions(["x"], [" great" * 20], ["positive"]) == [float(verifiable.MENTIONS_CAP)]
    assert verifiable.mentions(["x"], [" great"], ["negative"]) == [0.0]


def test_a_spec_reward_gets_the_sentiment_column_of_each_record():
    records = read_records([{"prompt": "what a terrible", "sentiment": "negative"},
                            {"prompt": "what a wonderful", "sentiment": "positive"}], "prompt")
    out = build_reward(SPEC)([records[0], records[0], records[1]], [" movie ! ugh !"] * 3)
    assert out.rewards.tolist() == [1.0, 1.0, 0.0]


def test_records_are_deterministic_distinct_and_cued():
    """Same seed, same records; another seed, other records. Splits have their sizes, no prompt
    on both sides (the lab's eval hash decides), both sentiments about evenly, and each prompt
    is the start of a review whose only sentiment word is its last one, the word that sets the target."""
    a, b = verifiable.records(0), verifiable.records(0)
    assert a == b and a != verifiable.records(1)
    train, held = ({r["prompt"] for r in a[n]} for n in verifiable.NAMES)
    assert len(train) == verifiable.SIZES["verifiable_train"] and len(held) == verifiable.SIZES["verifiable_eval"]
    assert not train & held
    for name in verifiable.NAMES:
        share = sum(r["sentiment"] == "positive" for r in a[name]) / len(a[name])
        assert 0.4 < share < 0.6, (name, share)  # drawn 50/50: 4 binomial SDs at n = 256 is 0.125
        for r in a[name]:
            *head, cue = r["prompt"].split(" ")
            assert verifiable.sentiment_of(cue) == r["sentiment"] and head
            assert all(verifiable.sentiment_of(w) is None for w in head), r
            assert not any(t in r["prompt"] for t in grammar.TERMINATORS)


def test_files_are_written_on_first_use_and_read_as_lab_names(tmp_path):
    """In a lab folder (here a stand-in: only its manifest is read) the files appear on first use,
    hold `records(seed)` and are reused; `lab:verifiable_*` reads the default lab's, generated
    there the same way; an unknown name is a one-line DataError."""
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "manifest.json").write_text(json.dumps({"seed": 3}))
    path = verifiable.data_file("verifiable_eval", lab)
    assert path.parent.parent == lab and path.is_file()
    rows = [json.loads(x) for x in path.read_text().split("\n") if x]
    assert rows == verifiable.records(3)["verifiable_eval"]
    mtime = path.stat().st_mtime_ns
    assert verifiable.data_file("verifiable_eval", lab).stat().st_mtime_ns == mtime  # not rewritten
    with pytest.raises(KeyError, match="verifiable_nope"):
        verifiable.data_file("verifiable_nope", lab)

    records = read_records("lab:verifiable_eval", "prompt")
    assert len(records) == verifiable.SIZES["verifiable_eval"]
    assert all(r.columns["sentiment"] in ("positive", "negative") for r in records)
    with pytest.raises(DataError, match="no such lab data file"):
        read_records("lab:verifiable_nope", "prompt")


def test_the_task_is_not_part_of_the_lab_key():
    """Editing the task must not rebuild the lab for everyone: its files are keyed on their own."""
    from rlhfkit.lab.spec import KEY_SOURCES

    assert "verifiable.py" not in KEY_SOURCES
