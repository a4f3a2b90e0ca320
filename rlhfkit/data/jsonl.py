"""The one JSONL reader and writer: one JSON object a line, lines split on "\\n" only.

Why not `str.splitlines()`: it also splits at U+2028, U+2029, U+0085 and other separators that
JSON allows raw inside strings (and that `ensure_ascii=False` writes raw), so a record holding
one of them would be cut in two. Files are read as bytes and split at b"\\n" alone.

`write_jsonl` replaces a file atomically (temp file, fsync, rename): readers never see half of
one. `append_jsonl` makes each appended record durable before returning, so a killed
collection loses at most the record being written; `read_jsonl(..., torn_tail="skip")` reads a
file another process may be appending to, ignoring an unfinished last line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from rlhfkit.data.records import DataError


def iter_jsonl(path: str | os.PathLike, *, torn_tail: Literal["error", "skip"] = "error",
               label: str | None = None) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed value) for every non-blank line of `path`.

    UTF-8 (a leading BOM is accepted). A line that is not valid JSON raises `DataError` naming
    the file and line, except an unterminated last line with `torn_tail="skip"`: a writer that
    crashed (or is still writing) mid-line, which is skipped.
    """
    label = label or str(path)
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    for n, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as e:
            if torn_tail == "skip" and n == len(lines) and raw:
                return
            raise DataError(f"not UTF-8 text ({e.reason})", source=label, line=n) from None
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            if torn_tail == "skip" and n == len(lines):  # no "\n" after it: an unfinished write
                return
            raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", source=label, line=n) from None


def read_jsonl(path: str | os.PathLike, *, torn_tail: Literal["error", "skip"] = "error") -> list[Any]:
    """Every value in `path` (see `iter_jsonl`); a missing file is a `DataError`."""
    if not Path(path).is_file():
        raise DataError("file not found", source=str(path))
    return [obj for _, obj in iter_jsonl(path, torn_tail=torn_tail)]


def dumps_line(item: Any) -> str:
    """One record (a record type with `to_json`, or a mapping) as a JSON line, "\\n" included.
    Non-ASCII text is written as is; json escapes "\\n" inside strings, so a line is one record."""
    if hasattr(item, "to_json"):
        item = item.to_json()
    if not isinstance(item, Mapping):
        raise TypeError(f"expected a record or a dict, got {type(item).__name__}")
    return json.dumps(dict(item), ensure_ascii=False) + "\n"


def write_jsonl(path: str | os.PathLike, records_or_dicts: Iterable[Any]) -> Path:
    """Write records (or plain dicts) one JSON object a line, replacing `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for item in records_or_dicts:
                f.write(dumps_line(item))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one record as a line and fsync it, for incremental collection.

    If the file ends in a torn line (a crash mid-write), the new record starts on a fresh line
    so it is not glued onto the fragment.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = dumps_line(obj).encode("utf-8")
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = b"\n" + line
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
