"""Unpaired feedback records (thumbs up/down, KTO's data): shapes read, errors, and the
comparison -> feedback rule (best desirable, worst undesirable)."""

from __future__ import annotations

import pytest
from conftest import write_jsonl

from rlhfkit.cli import main
from rlhfkit.data import DataError, Feedback, read_feedback, read_records

USER = {"role": "user", "content": "rate this film"}
ASSISTANT = {"role": "assistant", "content": "it was great ."}


def test_plain_record_round_trips():
    rec = Feedback.from_json({"prompt": "this movie", "completion": " was great .", "label": True, "item": "x1"})
    assert (rec.prompt, rec.completion, rec.label, rec.messages) == ("this movie", " was great .", True, None)
    assert Feedback.from_json(rec.to_json()) == rec
    with_annotator = Feedback.from_json({**rec.to_json(), "label": False, "annotator": "alice"})
    assert with_annotator.to_json() == {"prompt": "this movie", "completion": " was great .", "label": False,
                                        "annotator": "alice"}


@pytest.mark.parametrize(
    "row",
    [
        {"messages": [USER, ASSISTANT], "label": False},  # the whole conversation
        {"prompt": [USER], "completion": [ASSISTANT], "label": False},  # TRL's unpaired conversational form
        {"prompt": "rate this film", "completion": [ASSISTANT], "label": False},  # string prompt = one user turn
        {"messages": [USER], "completion": "it was great .", "label": False},  # prompt conversation + completion
        {"prompt": [USER], "completion": "it was great .", "label": False},
    ],
)
def test_conversational_shapes_read_the_same(row):
    rec = Feedback.from_json(row)
    assert rec.prompt == "rate this film" and rec.completion == "it was great ." and rec.label is False
    assert [m.to_json() for m in rec.messages] == [USER, ASSISTANT]
    assert [m.to_json() for m in rec.prompt_messages] == [USER]
    assert Feedback.from_json(rec.to_json()) == rec  # written back with messages + text views


@pytest.mark.parametrize(
    "row, field, words",
    [
        ({"prompt": "p", "completion": "c", "label": 1}, "label", "expected true (thumbs up) or false"),
        ({"prompt": "p", "completion": "c", "label": "yes"}, "label", "got string"),
        ({"prompt": "p", "completion": "c"}, "label", "missing"),
        ({"prompt": "p", "completion": "c", "label": None}, "label", "missing"),  # null is absent
        ({"prompt": "p", "completion": "  ", "label": True}, "completion", "empty"),
        ({"prompt": "p", "label": True}, "completion", "missing"),
        ({"completion": "c", "label": True}, "prompt", "missing"),
        ({"prompt": [USER], "completion": [ASSISTANT, ASSISTANT], "label": True}, "completion",
         "one assistant message"),
        ({"prompt": [USER], "completion": [USER], "label": True}, "completion", "one assistant message"),
        ({"messages": [USER], "label": True}, "completion", "missing"),
        ({"messages": [ASSISTANT], "label": True}, "messages", "needs earlier turns"),
        ({"messages": [USER, ASSISTANT], "completion": "another answer", "label": True}, "completion",
         "not two different ones"),
        ({"prompt": [USER, ASSISTANT], "completion": [ASSISTANT], "label": True}, "prompt",
         "must end with a user"),
        ({"prompt": "p", "completion": "c", "label": True, "annotator": 3}, "annotator", "expected a string"),
    ],
)
def test_bad_records_name_the_field(row, field, words):
    with pytest.raises(DataError) as err:
        Feedback.from_json(row)
    assert err.value.field == field and words in err.value.message


def test_reader_locates_bad_lines_and_needs_both_labels(tmp_path):
    ok = {"prompt": "p", "completion": "c", "label": True}
    bad = write_jsonl(tmp_path / "bad.jsonl", [ok, {**ok, "label": 0}])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: field 'label': expected true"):
        read_records(str(bad), "feedback")
    empty = write_jsonl(tmp_path / "empty.jsonl", [ok, {**ok, "completion": ""}])
    with pytest.raises(DataError, match=r"empty\.jsonl:2: field 'completion': is empty"):
        read_records(str(empty), "feedback")
    ups = write_jsonl(tmp_path / "ups.jsonl", [ok, ok])
    with pytest.raises(DataError) as err:  # a file-level error: no line to point at
        read_records(str(ups), "feedback")
    assert str(err.value).startswith(f"{ups}: field 'label': all 2 records have label true (thumbs up); KTO needs both")
    downs = [{**ok, "label": False}] * 3
    with pytest.raises(DataError, match="all 3 records have label false"):
        read_records(downs, "feedback")  # any source read_records takes, a list of dicts here
    both = read_records(str(write_jsonl(tmp_path / "both.jsonl", [ok, downs[0]])), "feedback")
    assert [r.label for r in both] == [True, False]


def test_the_cli_prints_a_one_line_error_before_anything_loads(tmp_path, capsys):
    """`rlhfkit agreement` validates a thumbs file line by line: a bad label is exit 2, one line."""
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "completion": "c", "label": "up"}])
    assert main(["agreement", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "bad.jsonl:1: field 'label'" in err


def test_comparisons_read_as_feedback_best_up_worst_down(tmp_path):
    """K=2: chosen up, rejected down. K=3 ranking [2, 0, 1]: response 2 up, response 1 down,
    response 0 (the middle) not used. A conversational comparison keeps its messages."""
    rows = [
        {"prompt": "p1", "chosen": "good", "rejected": "bad", "annotator": "alice"},
        {"prompt": "p2", "responses": ["middle", "worst", "best"], "ranking": [2, 0, 1]},
        {"prompt": [USER], "chosen": [ASSISTANT], "rejected": [{"role": "assistant", "content": "meh ."}]},
    ]
    got = read_feedback(str(write_jsonl(tmp_path / "cmp.jsonl", rows)))
    assert [(f.prompt, f.completion, f.label) for f in got[:4]] == [
        ("p1", "good", True), ("p1", "bad", False), ("p2", "best", True), ("p2", "worst", False)]
    assert got[0].annotator == "alice" and got[2].annotator is None
    up, down = got[4:]
    assert [m.to_json() for m in up.messages] == [USER, ASSISTANT] and up.label is True
    assert down.messages[-1].content == "meh ." and down.label is False
    assert len(got) == 6


def test_read_feedback_reads_a_feedback_file_as_such(tmp_path):
    rows = [{"prompt": "p", "completion": "c", "label": True}, {"prompt": "p", "completion": "d", "label": False}]
    assert read_feedback(str(write_jsonl(tmp_path / "fb.jsonl", rows))) == read_records(rows, "feedback")
    with pytest.raises(DataError, match=r"fb1\.jsonl: field 'label': all 1 records"):
        read_feedback(str(write_jsonl(tmp_path / "fb1.jsonl", rows[:1])))
    # a first row without a label means comparisons: a feedback row later is a comparison error
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, rows[0]])
    with pytest.raises(DataError, match=r"mixed\.jsonl:2: field"):
        read_feedback(str(mixed))
