"""Reading and writing record files, with errors that say where the bad record is.

Reading is eager: every record is parsed and validated before the function returns, so
a typo on line 90 000 stops the run before the first optimiser step, with a message a
person can act on (``data/train.jsonl:17: field 'ranking': [0, 0, 2] is not a
permutation of 0..2``). JSONL is read line by line by us (exact line numbers); other
formats go through HF ``datasets`` and are located by 0-based row index.

Writing lives in `data.jsonl` (`write_jsonl`, `append_jsonl`), beside the one JSONL reader.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rlhfkit.data.formats import canonical
from rlhfkit.data.jsonl import iter_jsonl
from rlhfkit.data.records import RECORD_TYPES, DataError, Feedback, Record, json_type

# File suffix -> `datasets.load_dataset` builder name.
_DATASET_FORMATS = {".json": "json", ".parquet": "parquet", ".csv": "csv"}

# (location, object): location is {"line": n} for JSONL, {"row": i} for datasets.
_Located = tuple[dict[str, int], Any]


def read_records(source: Any, kind: str) -> list[Record]:
    """Read and validate every record of ``kind`` from ``source``.

    ``kind`` is one of "text", "prompt", "demonstration", "comparison", "feedback". ``source`` is a
    ``.jsonl`` path; a ``.json`` / ``.parquet`` / ``.csv`` path (through
    ``datasets.load_dataset``); a folder written by ``Dataset.save_to_disk``; a
    ``datasets.Dataset``; a list of dicts; or ``"lab:NAME"`` for a built-in lab file.
    Each row may be in rlhfkit's own shape or in a layout other toolkits use (Anthropic
    HH, TRL's conversational and prompt-completion forms, UltraFeedback-binarized); see
    `data.formats` for the detection rules. Raises `DataError` naming source, line (or row)
    and field on the first bad record, and when there are no records at all.
    """
    if kind not in RECORD_TYPES:
        raise DataError(f"unknown record kind {kind!r}; expected one of {', '.join(RECORD_TYPES)}")
    record_type = RECORD_TYPES[kind]
    label, rows = _open(source)

    records = []
    for location, obj in rows:
        if not isinstance(obj, Mapping):
            raise DataError(f"expected a JSON object, got {json_type(obj)}").at(label, **location)
        try:
            records.append(record_type.from_json(canonical(obj, kind)))
        except DataError as e:
            raise e.at(label, **location) from None
    if not records:
        raise DataError(f"no {kind} records (the source is empty)", source=label)
    check_file = getattr(record_type, "check_file", None)
    if check_file is not None:  # rules over the whole file (feedback: both labels present)
        check_file(records, label)
    return records


def read_feedback(source: Any) -> list[Feedback]:
    """Thumbs up/down records from a feedback file, or from a comparison file.

    A source whose first row has a ``label`` is read as feedback. Anything else is read as
    comparisons, each giving two records (`Feedback.from_comparison`): its best response is
    desirable (label true) and its worst undesirable (false); for K = 2, chosen and rejected.
    The middle responses of K > 2 are not used. ``source`` is anything `read_records` takes.
    """
    _, rows = _open(source)
    first = next((obj for _, obj in rows), None)
    if isinstance(first, Mapping) and "label" in first:
        return read_records(source, "feedback")
    return [f for c in read_records(source, "comparison") for f in Feedback.from_comparison(c)]


def _open(source: Any) -> tuple[str, Iterator[_Located]]:
    """Dispatch on what ``source`` is; returns (label for messages, located objects)."""
    from datasets import Dataset, DatasetDict  # heavy import, only when reading

    if isinstance(source, Dataset):
        return "<Dataset>", _dataset_rows(source)
    if isinstance(source, DatasetDict):
        raise DataError(
            f"is a DatasetDict with splits {sorted(source)}; pass one split, e.g. ds['train']",
            source="<DatasetDict>",
        )
    if isinstance(source, Sequence) and not isinstance(source, str | bytes):
        return "<list>", _dataset_rows(source)
    if isinstance(source, str) and source.startswith("lab:"):
        return _open(_lab_file(source))
    if not isinstance(source, str | os.PathLike):
        raise DataError(
            f"cannot read records from a {type(source).__name__}; pass a path, "
            "a datasets.Dataset, a list of dicts or 'lab:NAME'"
        )

    path = Path(source)
    label = str(source)
    if not path.exists():
        raise DataError("file not found", source=label)
    if path.is_dir():
        return label, _dataset_rows(_load_from_disk(path, label))
    if path.suffix == ".jsonl":
        return label, _jsonl_rows(path, label)
    if path.suffix in _DATASET_FORMATS:
        return label, _dataset_rows(_load_file(path, label))
    raise DataError(
        f"unsupported file type {path.suffix!r}; use .jsonl, .json, .parquet, .csv, "
        "a save_to_disk folder, a datasets.Dataset or lab:NAME",
        source=label,
    )


def _lab_file(source: str) -> Path:
    # Imported lazily: rlhfkit.lab sits beside data/ and reading plain files needs none of it.
    from rlhfkit.lab import data_file, verifiable

    name = source.removeprefix("lab:")
    try:
        # The verifiable task's files are generated on first use, not at lab build time.
        return verifiable.data_file(name) if name in verifiable.NAMES else data_file(name)
    except (KeyError, ValueError, FileNotFoundError) as e:
        raise DataError(f"no such lab data file: {e}", source=source) from e


def _jsonl_rows(path: Path, label: str) -> Iterator[_Located]:
    """One object per non-blank line, 1-based line numbers (lines split on "\\n" only)."""
    for n, obj in iter_jsonl(path, label=label):
        yield {"line": n}, obj


def _dataset_rows(dataset: Iterable) -> Iterator[_Located]:
    for i, row in enumerate(dataset):
        yield {"row": i}, row


def _load_from_disk(path: Path, label: str):
    from datasets import DatasetDict, load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise DataError(
            f"is a folder but not one written by Dataset.save_to_disk ({e})", source=label
        ) from e
    if isinstance(dataset, DatasetDict):
        raise DataError(
            f"holds a DatasetDict with splits {sorted(dataset)}; point at one split's "
            f"folder, e.g. {path / sorted(dataset)[0]}",
            source=label,
        )
    return dataset


def _load_file(path: Path, label: str):
    from datasets import load_dataset

    builder = _DATASET_FORMATS[path.suffix]
    try:
        return load_dataset(builder, data_files=str(path), split="train")
    except Exception as e:  # arrow/builder errors have many types; all mean "cannot load"
        hint = ""
        if builder == "json":
            hint = "; if it is one object per line, name it .jsonl to get line-by-line errors"
        raise DataError(f"could not load as {builder}: {e}{hint}", source=label) from e
