"""Readers: every source kind, and every bad input reported as file:line: field: why."""

import json

import pytest
from datasets import Dataset, DatasetDict

from rlhfkit.data import (
    Comparison,
    DataError,
    Demonstration,
    PromptRecord,
    TextRecord,
    append_jsonl,
    read_records,
    write_jsonl,
)

EXPECTED_COMPARISON = Comparison.expected


def _jsonl(tmp_path, *lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _error(source, kind):
    with pytest.raises(DataError) as e:
        read_records(source, kind)
    return str(e.value)


GOOD = '{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]}'


# ---- reading good data ---------------------------------------------------------------


def test_jsonl_comparisons_and_pairwise(tmp_path):
    path = _jsonl(tmp_path, GOOD, '{"prompt": "q", "chosen": "yes", "rejected": "no"}')
    a, b = read_records(path, "comparison")
    assert a == Comparison("p", ("a", "b", "c"), (2, 0, 1))
    assert b.responses == ("yes", "no") and b.ranking == (0, 1)


def test_blank_lines_skipped_but_counted(tmp_path):
    path = _jsonl(tmp_path, '{"text": "one"}', "", "   ", '{"text": ""}')
    assert _error(path, "text") == f"{path}:4: field 'text': is empty (or only whitespace)"


def test_all_kinds_from_jsonl(tmp_path):
    assert read_records(_jsonl(tmp_path, '{"text": "t"}'), "text") == [TextRecord("t")]
    assert read_records(_jsonl(tmp_path, '{"prompt": "p"}'), "prompt") == [PromptRecord("p")]
    demo = _jsonl(tmp_path, '{"prompt": "p", "response": "r", "id": 7}')
    assert read_records(demo, "demonstration") == [Demonstration("p", "r")]


def test_mixed_rows_where_arrow_fills_missing_columns_with_none(tmp_path):
    # Arrow unifies the schema: the pairwise row gets responses=None, ranking=None.
    path = _jsonl(
        tmp_path, GOOD, '{"prompt": "q", "chosen": "y", "rejected": "n"}', name="mixed.json"
    )
    a, b = read_records(path, "comparison")
    assert a.ranking == (2, 0, 1) and b.responses == ("y", "n")


def test_dataset_object_error_names_row():
    ds = Dataset.from_list([{"prompt": "p", "response": "r"}, {"prompt": "p", "response": " "}])
    assert _error(ds, "demonstration") == (
        "<Dataset>:row 1: field 'response': is empty (or only whitespace)"
    )


def test_save_to_disk_folder(tmp_path):
    Dataset.from_list([{"prompt": "p", "response": "r"}]).save_to_disk(tmp_path / "ds")
    assert read_records(tmp_path / "ds", "demonstration") == [Demonstration("p", "r")]


def test_save_to_disk_datasetdict_asks_for_a_split(tmp_path):
    ds = Dataset.from_list([{"text": "t"}])
    DatasetDict({"train": ds, "test": ds}).save_to_disk(tmp_path / "dd")
    assert "holds a DatasetDict with splits ['test', 'train']" in _error(tmp_path / "dd", "text")


def test_json_via_load_dataset(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(
        json.dumps([json.loads(GOOD), {"prompt": "q", "responses": ["x"], "ranking": [0]}])
    )
    assert _error(path, "comparison") == (
        f"{path}:row 1: field 'responses': has 1 response(s); a comparison needs at least 2"
    )


def test_parquet_and_csv(tmp_path):
    ds = Dataset.from_list([{"prompt": "p", "response": "r"}])
    ds.to_parquet(tmp_path / "d.parquet")
    ds.to_csv(tmp_path / "d.csv", index=False)
    for name in ("d.parquet", "d.csv"):
        assert read_records(tmp_path / name, "demonstration") == [Demonstration("p", "r")]


def test_list_of_dicts():
    assert read_records([{"text": "a"}, {"text": "b"}], "text") == [
        TextRecord("a"),
        TextRecord("b"),
    ]


def test_lab_source_resolves_through_lab_data_file(tmp_path, monkeypatch):
    path = _jsonl(tmp_path, '{"prompt": "from the lab"}')
    monkeypatch.setattr("rlhfkit.lab.data_file", lambda name: path, raising=False)
    assert read_records("lab:prompts", "prompt") == [PromptRecord("from the lab")]


def test_lab_unknown_name(monkeypatch):
    def data_file(name):
        raise KeyError(name)

    monkeypatch.setattr("rlhfkit.lab.data_file", data_file, raising=False)
    assert _error("lab:nope", "prompt") == "lab:nope: no such lab data file: 'nope'"


def test_conversational_records(tmp_path):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    path = _jsonl(tmp_path, json.dumps({"messages": msgs}))
    (demo,) = read_records(path, "demonstration")
    assert demo.response == "hello" and demo.prompt == "hi"


# ---- bad data: exact messages --------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    assert _error(path, "text") == f"{path}: file not found"


def test_invalid_json_gives_position(tmp_path):
    path = _jsonl(tmp_path, '{"prompt": "a", "response": "b"}', '{"prompt": "a" "response": "b"}')
    assert _error(path, "demonstration") == (
        f"{path}:2: invalid JSON: Expecting ',' delimiter (column 16)"
    )


def test_line_not_an_object(tmp_path):
    path = _jsonl(tmp_path, "[1, 2]")
    assert _error(path, "text") == f"{path}:1: expected a JSON object, got list"


def test_missing_field_says_what_is_expected(tmp_path):
    path = _jsonl(tmp_path, GOOD, '{"prompt": "p", "responses": ["a", "b"]}')
    assert (
        _error(path, "comparison") == f"{path}:2: field 'ranking': missing; {EXPECTED_COMPARISON}"
    )


def test_missing_demonstration_field(tmp_path):
    path = _jsonl(tmp_path, '{"prompt": "p"}')
    assert _error(path, "demonstration") == (
        f"{path}:1: field 'response': missing; a demonstration needs 'prompt' and 'response' "
        "(strings), 'messages' ending with the assistant's response, or 'prompt' and "
        "'completion' (strings or message lists)"
    )


def test_pairwise_missing_rejected(tmp_path):
    path = _jsonl(tmp_path, '{"prompt": "p", "chosen": "a"}')
    assert (
        _error(path, "comparison") == f"{path}:1: field 'rejected': missing; {EXPECTED_COMPARISON}"
    )


def test_wrong_type_prompt_number(tmp_path):
    path = _jsonl(tmp_path, '{"prompt": 42}')
    assert _error(path, "prompt") == f"{path}:1: field 'prompt': expected a string, got number 42"


def test_responses_not_list_of_strings(tmp_path):
    path = _jsonl(tmp_path, '{"prompt": "p", "responses": ["a", 3], "ranking": [0, 1]}')
    assert _error(path, "comparison") == (
        f"{path}:1: field 'responses[1]': expected a string, got number 3"
    )


def test_bad_ranking(tmp_path):
    path = _jsonl(
        tmp_path,
        *[GOOD] * 16,
        '{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 0, 2]}',
    )
    assert _error(path, "comparison") == (
        f"{path}:17: field 'ranking': [0, 0, 2] is not a permutation of 0..2 "
        "(one index per response, best first)"
    )


def test_fewer_than_two_responses(tmp_path):
    path = _jsonl(tmp_path, '{"prompt": "p", "responses": ["a"], "ranking": [0]}')
    assert _error(path, "comparison") == (
        f"{path}:1: field 'responses': has 1 response(s); a comparison needs at least 2"
    )


def test_malformed_message(tmp_path):
    msgs = [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]
    path = _jsonl(tmp_path, json.dumps({"messages": msgs}))
    assert _error(path, "demonstration") == (
        f"{path}:1: field 'messages[1].role': 'robot' is not one of system, user, assistant"
    )


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    assert _error(path, "comparison") == f"{path}: no comparison records (the source is empty)"


def test_empty_dataset():
    assert _error(Dataset.from_dict({"text": []}), "text") == (
        "<Dataset>: no text records (the source is empty)"
    )


def test_not_utf8(tmp_path):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    assert _error(path, "text").startswith(f"{path}:2: not UTF-8 text")


def test_unsupported_suffix_and_kind(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello")
    assert _error(path, "text").startswith(f"{path}: unsupported file type '.txt'")
    assert "unknown record kind 'preference'" in _error(path, "preference")


def test_unloadable_json_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    message = _error(path, "text")
    assert message.startswith(f"{path}: could not load as json")
    assert "name it .jsonl" in message


# ---- writing -------------------------------------------------------------------------


def test_write_then_read_round_trip(tmp_path):
    records = [
        Comparison("p", ("a", "b"), (1, 0), soft_label=0.9, annotator="me"),
        Comparison.from_json({"prompt": "q", "chosen": "é", "rejected": "n"}),
    ]
    path = write_jsonl(tmp_path / "sub" / "c.jsonl", records)
    assert read_records(path, "comparison") == records
    assert [p.name for p in path.parent.iterdir()] == ["c.jsonl"]  # no temp file left


def test_write_replaces_and_accepts_dicts(tmp_path):
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [{"text": "old"}] * 3)
    write_jsonl(path, [{"text": "new"}])
    assert read_records(path, "text") == [TextRecord("new")]


def test_append_jsonl_and_torn_line(tmp_path):
    path = tmp_path / "collect.jsonl"
    append_jsonl(path, TextRecord("one"))
    append_jsonl(path, {"text": "two"})
    assert read_records(path, "text") == [TextRecord("one"), TextRecord("two")]
    with open(path, "a") as f:
        f.write('{"text": "tor')  # a crash mid-write
    append_jsonl(path, {"text": "four"})
    assert path.read_text().splitlines()[-1] == '{"text": "four"}'
    assert _error(path, "text").startswith(f"{path}:3: invalid JSON")
