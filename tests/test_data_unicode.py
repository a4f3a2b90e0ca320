"""Every record type and input layout survives U+2028, U+2029 and U+0085 inside its strings:
written with rlhfkit.data.write_jsonl and read back through read_records unchanged, from
.jsonl, and from .json and .parquet through HF datasets.

These three characters are line breaks to str.splitlines() but ordinary characters inside a
JSON string; a reader that split lines with splitlines() would cut such a record in two."""

import pytest
from datasets import Dataset

from rlhfkit.data import (
    Comparison,
    Demonstration,
    Message,
    PromptRecord,
    TextRecord,
    read_records,
    write_jsonl,
)

SEP = "\u2028 \u2029 \u0085"


def s(text: str) -> str:
    """``text`` with the separators inside it (never only them: strings must not be blank)."""
    return f"{text} {SEP} end"


def msg(role, text):
    return {"role": role, "content": s(text)}


CHAT = (Message("system", s("rules")), Message("user", s("hi")))

# kind -> the records, in rlhfkit's own shape
RECORDS = {
    "text": [TextRecord(s("text"))],
    "prompt": [PromptRecord(s("p")), PromptRecord(s("view"), CHAT)],
    "demonstration": [Demonstration(s("p"), s("r")), Demonstration.from_messages([*CHAT, Message("assistant", s("a"))])],
    "comparison": [
        Comparison(s("p"), (s("a"), s("b"), s("c")), (2, 0, 1), scores=(0.5, 1.0, 2.0), annotator=s("me")),
        Comparison(s("p"), (s("a"), s("b")), (0, 1), soft_label=0.75),
        Comparison(s("view"), (s("a"), s("b")), (1, 0), messages=CHAT),
    ],
}

# kind -> (row in another layout, the record it reads as)
HH_PROMPT = "\n\nHuman: " + s("question") + "\n\nAssistant:"
LAYOUTS = {
    "prompt": [({"prompt": [msg("user", "hi")]}, PromptRecord(s("hi"), (Message("user", s("hi")),)))],
    "demonstration": [
        ({"prompt": s("p"), "completion": s("c")}, Demonstration(s("p"), s("c"))),
        ({"prompt": [msg("user", "p")], "completion": [msg("assistant", "c")]},
         Demonstration.from_messages([Message("user", s("p")), Message("assistant", s("c"))])),
    ],
    "comparison": [
        ({"chosen": HH_PROMPT + " " + s("yes"), "rejected": HH_PROMPT + " " + s("no")},
         Comparison(HH_PROMPT, (" " + s("yes"), " " + s("no")), (0, 1))),
        ({"prompt": [*[m.to_json() for m in CHAT]], "chosen": [msg("assistant", "y")], "rejected": [msg("assistant", "n")]},
         Comparison("system: " + s("rules") + "\n\nuser: " + s("hi"), (s("y"), s("n")), (0, 1), messages=CHAT)),
        ({"chosen": [msg("user", "hi"), msg("assistant", "y")], "rejected": [msg("user", "hi"), msg("assistant", "n")]},
         Comparison(s("hi"), (s("y"), s("n")), (0, 1), messages=(Message("user", s("hi")),))),
        ({"prompt": s("hi"), "chosen": [msg("user", "hi"), msg("assistant", "y")],
          "rejected": [msg("user", "hi"), msg("assistant", "n")]},
         Comparison(s("hi"), (s("y"), s("n")), (0, 1), messages=(Message("user", s("hi")),))),
    ],
}


@pytest.mark.parametrize("kind", RECORDS)
def test_records_round_trip_through_jsonl_json_and_parquet(tmp_path, kind):
    records = RECORDS[kind]
    path = write_jsonl(tmp_path / f"{kind}.jsonl", records)
    assert SEP in path.read_text(encoding="utf-8")  # written raw (ensure_ascii=False), not escaped
    assert read_records(path, kind) == records
    # .json holding JSON lines, and parquet: both through datasets.load_dataset
    assert read_records(write_jsonl(tmp_path / f"{kind}.json", records), kind) == records
    rows = [r.to_json() for r in records]
    columns = {key for row in rows for key in row}  # Dataset.from_list takes the first row's keys
    Dataset.from_list([{key: row.get(key) for key in columns} for row in rows]).to_parquet(tmp_path / f"{kind}.parquet")
    assert read_records(tmp_path / f"{kind}.parquet", kind) == records


@pytest.mark.parametrize("kind", LAYOUTS)
def test_other_layouts_round_trip(tmp_path, kind):
    rows, expected = zip(*LAYOUTS[kind], strict=True)
    assert read_records(write_jsonl(tmp_path / f"{kind}.jsonl", rows), kind) == list(expected)
    for i, row in enumerate(rows):  # one file per row: arrow wants one column type per file
        assert read_records(write_jsonl(tmp_path / f"{kind}{i}.json", [row]), kind) == [expected[i]]
        Dataset.from_list([row]).to_parquet(tmp_path / f"{kind}{i}.parquet")
        assert read_records(tmp_path / f"{kind}{i}.parquet", kind) == [expected[i]]
