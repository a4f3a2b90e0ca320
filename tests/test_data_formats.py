"""Layouts users bring (Anthropic HH, TRL conversational, UltraFeedback), read from files
written in each form, from a datasets.Dataset and from a save_to_disk folder; records that fit
no layout, and non-finite numbers, as file:line: field errors."""

import json

import pytest
from datasets import Dataset

from rlhfkit.data import Comparison, DataError, Demonstration, Message, PromptRecord, read_records


def user(c):
    return {"role": "user", "content": c}


def bot(c):
    return {"role": "assistant", "content": c}


def _jsonl(tmp_path, *rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _error(source, kind):
    with pytest.raises(DataError) as e:
        read_records(source, kind)
    return str(e.value)


HI = (Message("user", "hi"),)

# ---- Anthropic HH ----------------------------------------------------------------------

HH_CHOSEN = "\n\nHuman: What is 2+2?\n\nAssistant: It is 4.\n\nHuman: Sure?\n\nAssistant: I am sure."
HH_REJECTED = "\n\nHuman: What is 2+2?\n\nAssistant: It is 4.\n\nHuman: Sure?\n\nAssistant: I am not."


def test_anthropic_hh_prompt_is_the_common_prefix_cut_at_the_last_assistant_marker(tmp_path):
    """Common prefix: "...\\n\\nAssistant: I am " (the answers share "I am"); TRL would cut there
    (less the space), mid-answer. Cut back to the end of the last "\\n\\nAssistant:" instead, so
    both responses are whole answers, each keeping its leading space."""
    (c,) = read_records(_jsonl(tmp_path, {"chosen": HH_CHOSEN, "rejected": HH_REJECTED}), "comparison")
    assert c.prompt == "\n\nHuman: What is 2+2?\n\nAssistant: It is 4.\n\nHuman: Sure?\n\nAssistant:"
    assert c.responses == (" I am sure.", " I am not.") and c.ranking == (0, 1)
    assert c.messages is None
    assert c.prompt + c.responses[0] == HH_CHOSEN


def test_anthropic_hh_keeps_other_fields_and_long_shared_prefixes(tmp_path):
    """A shared prefix longer than the 4096-character comparison block still splits exactly."""
    history = "\n\nHuman: " + "tell me more " * 1000 + "\n\nAssistant:"
    row = {"chosen": history + " yes", "rejected": history + " no", "soft_label": 0.75}
    (c,) = read_records(_jsonl(tmp_path, row), "comparison")
    assert c.prompt == history and c.responses == (" yes", " no") and c.soft_label == 0.75


def test_texts_without_a_prompt_or_hh_marker_name_the_accepted_forms(tmp_path):
    path = _jsonl(tmp_path, {"chosen": "\n\nHuman: hi\n\nAssistant: yes", "rejected": "\n\nHuman: hi\n\nAssistant: no"},
                  {"chosen": "the answer is yes", "rejected": "the answer is no"})
    message = _error(path, "comparison")
    assert message.startswith(f"{path}:2: field 'prompt': missing, and 'chosen' and 'rejected' share no Anthropic HH")
    for form in ("'responses' and 'ranking'", "two whole conversations", "Anthropic HH transcripts"):
        assert form in message
    assert "\n" not in message  # one line


def test_hh_whose_remainder_is_empty_is_an_error(tmp_path):
    path = _jsonl(tmp_path, {"chosen": "\n\nHuman: hi\n\nAssistant: yes", "rejected": "\n\nHuman: hi\n\nAssistant:"})
    assert _error(path, "comparison") == f"{path}:1: field 'rejected': is empty (or only whitespace)"


# ---- TRL conversational preference -----------------------------------------------------


def test_trl_explicit_conversational_preference(tmp_path):
    row = {"prompt": [{"role": "system", "content": "be brief"}, user("hi")], "chosen": [bot("yes")],
           "rejected": [bot("no")], "scores": [2, 1]}
    (c,) = read_records(_jsonl(tmp_path, row), "comparison")
    assert c.messages == (Message("system", "be brief"), Message("user", "hi"))
    assert c.responses == ("yes", "no") and c.ranking == (0, 1) and c.scores == (2.0, 1.0)
    assert c.prompt == "system: be brief\n\nuser: hi"  # the text view for judges and logs
    assert Comparison.from_json(c.to_json()) == c  # written back in the canonical shape


def test_trl_implicit_conversational_preference_common_prefix_is_the_prompt(tmp_path):
    chosen = [user("hi"), bot("hello"), user("how are you?"), bot("fine")]
    rejected = [user("hi"), bot("hello"), user("how are you?"), bot("bad")]
    (c,) = read_records(_jsonl(tmp_path, {"chosen": chosen, "rejected": rejected}), "comparison")
    assert c.messages == (Message("user", "hi"), Message("assistant", "hello"), Message("user", "how are you?"))
    assert c.responses == ("fine", "bad")


def test_ultrafeedback_binarized_prompt_turn_is_not_duplicated(tmp_path):
    row = {"prompt": "hi", "prompt_id": "x1", "chosen": [user("hi"), bot("yes")], "rejected": [user("hi"), bot("no")],
           "score_chosen": 8.0, "score_rejected": 3.5}
    (c,) = read_records(_jsonl(tmp_path, row), "comparison")
    assert c.messages == HI and c.prompt == "hi" and c.responses == ("yes", "no")


def test_explicit_prompt_repeated_inside_chosen_is_not_duplicated(tmp_path):
    row = {"prompt": [user("hi")], "chosen": [user("hi"), bot("yes")], "rejected": [bot("no")]}
    (c,) = read_records(_jsonl(tmp_path, row), "comparison")
    assert c.messages == HI and c.responses == ("yes", "no")


def test_string_prompt_with_assistant_only_lists(tmp_path):
    row = {"prompt": "hi", "chosen": [bot("yes")], "rejected": [bot("no")]}
    (c,) = read_records(_jsonl(tmp_path, row), "comparison")
    assert c.messages == HI and c.responses == ("yes", "no")


def test_conversational_prompt_list_with_string_responses_and_rankings(tmp_path):
    a = {"prompt": [user("hi")], "chosen": "yes", "rejected": "no"}
    b = {"prompt": [user("hi")], "responses": ["x", "y", "z"], "ranking": [2, 0, 1]}
    c1, c2 = read_records(_jsonl(tmp_path, a, b), "comparison")
    assert c1.messages == HI and c1.responses == ("yes", "no")
    assert c2.messages == HI and c2.ranking == (2, 0, 1)


@pytest.mark.parametrize(
    ("row", "error"),
    [
        ({"chosen": [user("hi"), bot("yes")], "rejected": [user("ho"), bot("no")]},
         "field 'rejected': differs from 'chosen' at message 0, before the last turn"),
        ({"chosen": [user("hi"), bot("yes")], "rejected": [user("hi")]},
         "field 'rejected': must end with the assistant's response"),
        ({"prompt": [user("hi")], "chosen": [bot("a"), user("b"), bot("c")], "rejected": [bot("n")]},
         "field 'chosen': has 3 messages after the prompt; expected one assistant message"),
        ({"chosen": [bot("yes")], "rejected": [bot("no")]},
         "field 'chosen': is only the assistant's response and there is no 'prompt' to answer"),
        ({"chosen": [user("hi"), bot("x"), bot("yes")], "rejected": [user("hi"), bot("x"), bot("no")]},
         "field 'chosen': a prompt conversation must end with a user (or system) turn"),
        ({"chosen": [user("hi"), {"role": "robot", "content": "x"}], "rejected": [user("hi"), bot("no")]},
         "field 'chosen[1].role': 'robot' is not one of system, user, assistant"),
        ({"prompt": 3, "chosen": [user("hi"), bot("y")], "rejected": [user("hi"), bot("n")]},
         "field 'prompt': expected a string or a list of messages, got number"),
    ],
)
def test_conversational_comparison_errors_name_file_line_field(tmp_path, row, error):
    path = _jsonl(tmp_path, {"prompt": "ok", "chosen": "a", "rejected": "b"}, row)
    assert _error(path, "comparison").startswith(f"{path}:2: {error}")


# ---- TRL prompt-completion (SFT) and prompt-only ---------------------------------------


def test_prompt_completion_forms_read_as_demonstrations(tmp_path):
    rows = [
        {"prompt": "hi", "completion": "yes"},
        {"prompt": [user("hi")], "completion": [bot("yes")]},
        {"prompt": "hi", "completion": [bot("yes")]},
        {"prompt": [user("hi")], "completion": "yes"},
        {"prompt": [user("hi")], "completion": [user("hi"), bot("yes")]},
    ]
    plain, *conversational = read_records(_jsonl(tmp_path, *rows), "demonstration")
    assert plain == Demonstration("hi", "yes")
    whole = Demonstration("hi", "yes", (Message("user", "hi"), Message("assistant", "yes")))
    assert conversational == [whole] * 4


@pytest.mark.parametrize(
    ("row", "error"),
    [
        ({"completion": "yes"}, "field 'prompt': missing; a prompt-completion record needs 'prompt'"),
        ({"prompt": [user("hi")], "completion": [bot("a"), bot("b")]},
         "field 'completion': has 2 messages after the prompt; expected one assistant message"),
        ({"prompt": [user("hi"), bot("x")], "completion": "yes"},
         "field 'prompt': a prompt conversation must end with a user (or system) turn"),
    ],
)
def test_prompt_completion_errors(tmp_path, row, error):
    path = _jsonl(tmp_path, row)
    assert _error(path, "demonstration").startswith(f"{path}:1: {error}")


def test_conversational_prompt_only(tmp_path):
    (p,) = read_records(_jsonl(tmp_path, {"prompt": [user("hi")]}), "prompt")
    assert p == PromptRecord("hi", HI)


# ---- the same columns from datasets ----------------------------------------------------


FORMS = {
    "hh": {"chosen": "\n\nHuman: hi\n\nAssistant: yes", "rejected": "\n\nHuman: hi\n\nAssistant: no"},
    "trl": {"prompt": [user("hi")], "chosen": [bot("yes")], "rejected": [bot("no")]},
    "implicit": {"chosen": [user("hi"), bot("yes")], "rejected": [user("hi"), bot("no")]},
    "ultrafeedback": {"prompt": "hi", "chosen": [user("hi"), bot("yes")], "rejected": [user("hi"), bot("no")]},
}


@pytest.mark.parametrize("form", FORMS)
def test_dataset_and_saved_folder_read_like_jsonl(tmp_path, form):
    """Arrow stores message lists as lists of structs; the rows come back as dicts."""
    ds = Dataset.from_list([FORMS[form]] * 2)
    ds.save_to_disk(tmp_path / "saved")
    expected = read_records(_jsonl(tmp_path, FORMS[form]), "comparison") * 2
    assert read_records(ds, "comparison") == expected
    assert read_records(tmp_path / "saved", "comparison") == expected
    assert expected[0].responses in ((" yes", " no"), ("yes", "no"))


def test_prompt_completion_dataset_and_folder(tmp_path):
    ds = Dataset.from_list([{"prompt": [user("hi")], "completion": [bot("yes")]}])
    ds.save_to_disk(tmp_path / "saved")
    whole = [Demonstration("hi", "yes", (Message("user", "hi"), Message("assistant", "yes")))]
    assert read_records(ds, "demonstration") == whole
    assert read_records(tmp_path / "saved", "demonstration") == whole


# ---- non-finite numbers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "field", "value"),
    [
        ('{"prompt": "p", "chosen": "a", "rejected": "b", "soft_label": NaN}', "soft_label", "nan"),
        ('{"prompt": "p", "chosen": "a", "rejected": "b", "soft_label": Infinity}', "soft_label", "inf"),
        ('{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1], "scores": [1.0, NaN]}', "scores[1]", "nan"),
        ('{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1], "scores": [-Infinity, 0]}', "scores[0]", "-inf"),
    ],
)
def test_non_finite_numbers_are_errors_before_training(tmp_path, line, field, value):
    """Python's json reads NaN/Infinity; a NaN score would make a margin, then the loss, NaN."""
    path = tmp_path / "nan.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n' + line + "\n")
    assert _error(path, "comparison") == f"{path}:2: field '{field}': is {value}, not a finite number"


def test_non_finite_from_a_dataset_names_the_row():
    ds = Dataset.from_list([{"prompt": "p", "chosen": "a", "rejected": "b", "soft_label": 0.5},
                            {"prompt": "p", "chosen": "a", "rejected": "b", "soft_label": float("nan")}])
    assert _error(ds, "comparison") == "<Dataset>:row 1: field 'soft_label': is nan, not a finite number"
