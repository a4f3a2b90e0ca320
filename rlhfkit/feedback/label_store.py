"""The labelling page's file store: items to label, and the output JSONL of judgements.

`load_items` reads what to label; `LabelStore` owns the output file and who has judged what.
The HTTP side (`label_server.py`) only validates requests and calls the store.

Durability and concurrency, the parts a labelling session must not get wrong:
- each judgement is appended as one JSONL line and fsynced before the page is told "saved"
  (`data.append_jsonl`), so a crash or a closed tab loses nothing;
- every change happens under a thread lock *and* an OS lock (`fcntl.flock` on `.OUT.lock`), and
  state is re-read from the file inside the lock, so two annotators on one server, or two server
  processes on one file, never interleave or lose lines;
- undo rewrites the file without the annotator's last line (`data.write_jsonl`: temp file + rename);
- a restart reads the file and carries on: done items are not shown again.

Files are read only through `data/jsonl.py` (lines split on "\\n" alone), so text holding U+2028,
U+2029 or U+0085 stays one record. A torn last line (a crash mid-write, or another process that
writes without our lock) never stops the server: reads skip an unfinished last line, and before
every write (and at start) it is repaired: newline-terminated if it is a whole record, else cut.

Two modes. "rank": an item is a prompt with K responses, and records are `Comparison` JSON
(`prompt`, `responses`, `ranking` best first, `annotator`), so `rlhfkit reward` and `rlhfkit dpo`
read the file as is. "thumbs": an item is one (prompt, response), and records are `Feedback`
JSON (`prompt`, `completion`, `label` true for thumbs up, `annotator`), read with
`read_records(..., "feedback")`. Both add `item` (stable id) and `time`; `rlhfkit agreement` uses
`item` to find items judged by several people (`overlap`). One output file holds one mode.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfkit.data import (
    Comparison,
    DataError,
    Feedback,
    Message,
    PromptRecord,
    append_jsonl,
    read_jsonl,
    write_jsonl,
)
from rlhfkit.data.jsonl import iter_jsonl

ANNOTATOR_ID = re.compile(r"[A-Za-z0-9_.@-]{1,64}")  # used with fullmatch: "alice\n" is not alice
LEASE_SECONDS = 600  # an item shown to one annotator is not offered to another for this long
MODES = ("rank", "thumbs")


class LabelError(Exception):
    """A request the store refuses; carries the HTTP status and a message for the page."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# ---------------------------------------------------------------------- items


@dataclass(frozen=True)
class Item:
    """What one judgement is about: a prompt and its K responses (rank), or one response (thumbs)."""

    id: str
    prompt: str
    responses: tuple[str, ...]
    messages: tuple | None = None  # the prompt conversation, when the samples have one


def load_items(path: str | Path, mode: str = "rank") -> list[Item]:
    """Items to label from JSONL of `{prompt|messages, responses: [...]}` (what `rlhfkit sample
    --k K` writes; comparison records work too, their ranking is ignored). Rank mode: one item
    per record with >= 2 non-empty responses. Thumbs mode: one item per non-empty response
    (a `{prompt, completion}` or `{prompt, response}` record gives one). Ids are a hash of the
    content, so they survive reordering the file; repeats get a -2, -3 suffix."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", source=str(path))
    parse = _thumbs_items if mode == "thumbs" else _rank_items
    items: list[Item] = []
    seen: dict[str, int] = {}
    dropped = 0
    for n, obj in iter_jsonl(path):
        if not isinstance(obj, dict):
            raise DataError("expected a JSON object", source=str(path), line=n)
        if "responses" not in obj and {"chosen", "rejected"} <= obj.keys():
            obj = {**obj, "responses": [obj["chosen"], obj["rejected"]]}
        try:
            found, lost = parse(obj)
        except DataError as e:
            raise e.at(str(path), line=n) from None
        dropped += lost
        for prompt, responses, messages in found:
            key = hashlib.sha1(json.dumps([prompt, responses]).encode()).hexdigest()[:12]
            seen[key] = seen.get(key, 0) + 1
            items.append(Item(key if seen[key] == 1 else f"{key}-{seen[key]}", prompt, responses, messages))
    left_out, needed = (("empty response(s)", "a non-empty response") if mode == "thumbs" else
                        ("record(s) with fewer than 2 non-empty responses", "at least 2 non-empty responses"))
    if dropped:
        print(f"[label] left out {dropped} {left_out} of {path}")
    if not items:
        raise DataError(f"no items: no record has {needed}", source=str(path))
    return items


_Found = tuple[list[tuple[str, tuple[str, ...], tuple | None]], int]  # (prompt, responses, messages)s, left out


def _rank_items(obj: dict) -> _Found:
    """One item of all the record's responses; none when fewer than 2 are non-empty."""
    if isinstance(obj.get("responses"), list):  # an empty sample cannot be judged: leave it out
        kept = [r for r in obj["responses"] if not (isinstance(r, str) and not r.strip())]
        if len(kept) < 2 <= len(obj["responses"]):
            return [], 1
        obj = {**obj, "responses": kept}
    # the record type validates prompt/messages and responses
    rec = Comparison.from_json({**obj, "ranking": list(range(len(obj.get("responses") or [])))})
    return [(rec.prompt, rec.responses, rec.messages)], 0


def _thumbs_items(obj: dict) -> _Found:
    """One item per non-empty response of the record."""
    responses = obj.get("responses")
    for single in ("completion", "response"):
        if responses is None and single in obj:
            responses = [obj[single]]
    if not isinstance(responses, list):
        raise DataError("expected a list of response strings (or 'completion' / 'response': one string)",
                        field="responses")
    for i, r in enumerate(responses):
        if not isinstance(r, str):
            raise DataError(f"expected a string, got {type(r).__name__}", field=f"responses[{i}]")
    rec = PromptRecord.from_json({k: obj[k] for k in ("prompt", "messages") if k in obj})
    kept = [r for r in responses if r.strip()]
    return [(rec.prompt, (r,), rec.messages) for r in kept], len(responses) - len(kept)


def _unit(*parts: str) -> float:
    """A deterministic number in [0, 1) from strings (overlap choice, display shuffles)."""
    return int(hashlib.sha1("\x00".join(parts).encode()).hexdigest()[:12], 16) / 16**12


def check_annotator(annotator: Any) -> None:
    if not isinstance(annotator, str) or not ANNOTATOR_ID.fullmatch(annotator):
        raise LabelError(400, "annotator id must be 1-64 characters of letters, digits, _ . @ -")


# ---------------------------------------------------------------------- the store


@dataclass
class LabelStore:
    """The output file, its locks, and who has judged what. Safe across threads and processes."""

    out: Path
    items: list[Item]
    overlap: float = 0.0  # share of items that need `overlap_annotators` different annotators
    overlap_annotators: int = 2
    seed: int = 0
    mode: str = "rank"  # "rank": items of K responses -> comparisons; "thumbs": one response -> feedback
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _leases: dict[str, tuple[str, float]] = field(default_factory=dict, repr=False)  # item -> (annotator, expiry)
    _skipped: dict[str, set[str]] = field(default_factory=dict, repr=False)  # annotator -> items

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap <= 1.0:
            raise ValueError(f"overlap must be a share in [0, 1], got {self.overlap}")
        if self.overlap_annotators < 2:
            raise ValueError(f"overlap_annotators must be at least 2, got {self.overlap_annotators}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        self.out = Path(self.out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.by_id = {it.id: it for it in self.items}
        self.lock_path = self.out.with_name(f".{self.out.name}.lock")
        with self._locked():
            self._repair()
            records = self._read()
        if records and ("label" in records[0]) != (self.mode == "thumbs"):
            held, writes = ("thumbs labels", "rankings") if "label" in records[0] else ("rankings", "thumbs labels")
            raise DataError(f"holds {held}, and --mode {self.mode} writes {writes}; give another --out "
                            "(one file, one mode)", source=str(self.out))
        unknown = {r.get("item") for r in records} - self.by_id.keys() - {None}
        if unknown:
            print(f"[label] note: {len(unknown)} item id(s) in {self.out} are not in the samples file; kept as they are")

    # -------------------------------------------------------------- file access (under lock)
    @contextlib.contextmanager
    def _locked(self):
        with self._lock, open(self.lock_path, "a") as lockfile:
            fcntl.flock(lockfile, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lockfile, fcntl.LOCK_UN)

    def _repair(self) -> None:
        """Before a write: end a torn final line so the file stays valid JSONL. A whole record
        that only lacks its newline gets one; a fragment (a crash mid-write) is cut."""
        if not self.out.exists():
            return
        data = self.out.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        try:
            json.loads(data[cut:])
            with open(self.out, "ab") as f:
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
        except ValueError:  # JSONDecodeError or UnicodeDecodeError: an unfinished line
            print(f"[label] dropping a torn last line of {self.out} ({len(data) - cut} bytes)")
            with open(self.out, "r+b") as f:
                f.truncate(cut)
                os.fsync(f.fileno())

    def _read(self) -> list[dict[str, Any]]:
        """The records on disk; an unfinished last line (someone is, or was, writing it) is skipped."""
        return read_jsonl(self.out, torn_tail="skip") if self.out.exists() else []

    # -------------------------------------------------------------- state
    def needed(self, item_id: str) -> int:
        return self.overlap_annotators if _unit(str(self.seed), "overlap", item_id) < self.overlap else 1

    def _judges(self, records: list[dict]) -> dict[str, list[str]]:
        judges: dict[str, list[str]] = {}
        for r in records:
            judges.setdefault(str(r.get("item")), []).append(str(r.get("annotator")))
        return judges

    def _progress(self, records: list[dict], annotator: str | None) -> dict[str, int]:
        judges = self._judges(records)
        need = {it.id: self.needed(it.id) for it in self.items}
        return {
            "items": len(self.items),
            "total": sum(need.values()),  # judgements needed, overlap included
            "done": sum(min(len(set(judges.get(i, []))), n) for i, n in need.items()),
            "complete_items": sum(len(set(judges.get(i, []))) >= n for i, n in need.items()),
            "mine": sum(1 for r in records if r.get("annotator") == annotator),
            "skipped": len(self._skipped.get(annotator or "", set())),
        }

    def progress(self, annotator: str | None = None) -> dict[str, int]:
        with self._locked():
            return self._progress(self._read(), annotator)

    def _view(self, item: Item, annotator: str, records: list[dict]) -> dict[str, Any]:
        """The item as the page shows it: one response (thumbs), or the responses in a
        per-annotator shuffled order (rank)."""
        view = {"mode": self.mode, "item": item.id, "prompt": item.prompt, "progress": self._progress(records, annotator)}
        if self.mode == "thumbs":
            return {**view, "response": item.responses[0]}
        order = sorted(range(len(item.responses)), key=lambda i: _unit(str(self.seed), annotator, item.id, str(i)))
        return {**view, "k": len(item.responses), "responses": [{"index": i, "text": item.responses[i]} for i in order]}

    def next_item(self, annotator: str) -> dict[str, Any]:
        """The annotator's current item (a reload shows the same one), else the first open item,
        which is then leased to them (a write: the server takes it only by POST)."""
        check_annotator(annotator)
        now = time.time()
        with self._locked():
            records = self._read()
            judges = self._judges(records)
            skipped = self._skipped.get(annotator, set())

            def open_for(it: Item) -> bool:
                who = judges.get(it.id, [])
                return annotator not in who and len(set(who)) < self.needed(it.id) and it.id not in skipped

            for item_id, (holder, expiry) in list(self._leases.items()):
                if expiry < now or item_id not in self.by_id or not open_for(self.by_id[item_id]):
                    del self._leases[item_id]
                elif holder == annotator:
                    return self._view(self.by_id[item_id], annotator, records)
            for it in self.items:
                if open_for(it) and it.id not in self._leases:
                    self._lease(it.id, annotator)
                    return self._view(it, annotator, records)
            return {"mode": self.mode, "item": None, "done": True, "progress": self._progress(records, annotator)}

    def judge(self, annotator: str, item_id: Any, ranking: Any = None, label: Any = None) -> dict[str, Any]:
        """Validate and append one judgement (a ranking in rank mode, a label in thumbs mode);
        returns the written record and progress."""
        check_annotator(annotator)
        item = self._item(item_id)
        record = _thumbs_record(item, annotator, label) if self.mode == "thumbs" else _rank_record(item, annotator, ranking)
        record.update(item=item.id, time=round(time.time(), 3))
        with self._locked():
            records = self._read()
            if any(r.get("item") == item.id and r.get("annotator") == annotator for r in records):
                raise LabelError(409, f"annotator {annotator!r} has already judged item {item.id}; undo it first to change it")
            self._repair()
            append_jsonl(self.out, record)  # flushed and fsynced before we answer
            records.append(record)
            self._leases.pop(item.id, None)
            return {"saved": record, "progress": self._progress(records, annotator)}

    def skip(self, annotator: str, item_id: Any) -> dict[str, Any]:
        """Do not offer this item to this annotator again (in this server's lifetime)."""
        check_annotator(annotator)
        item = self._item(item_id)
        with self._locked():
            self._skipped.setdefault(annotator, set()).add(item.id)
            if self._leases.get(item.id, ("",))[0] == annotator:
                del self._leases[item.id]
            return {"skipped": item.id, "progress": self._progress(self._read(), annotator)}

    def undo(self, annotator: str) -> dict[str, Any]:
        """Remove the annotator's most recent judgement; its item becomes their current item."""
        check_annotator(annotator)
        with self._locked():
            records = self._read()
            mine = [i for i, r in enumerate(records) if r.get("annotator") == annotator]
            if not mine:
                raise LabelError(409, f"annotator {annotator!r} has no judgement to undo")
            removed = records.pop(mine[-1])
            write_jsonl(self.out, records)  # a torn fragment, skipped by _read, is left out
            item_id = removed.get("item")
            if item_id in self.by_id:
                self._skipped.get(annotator, set()).discard(item_id)
                self._lease(item_id, annotator)
                return {"undone": removed, **self._view(self.by_id[item_id], annotator, records)}
            return {"undone": removed, "item": None, "progress": self._progress(records, annotator)}

    def _lease(self, item_id: str, annotator: str) -> None:
        """Hold `item_id` for `annotator` (one item per annotator: their other lease ends)."""
        for other, (holder, _) in list(self._leases.items()):
            if holder == annotator:
                del self._leases[other]
        self._leases[item_id] = (annotator, time.time() + LEASE_SECONDS)

    def _item(self, item_id: Any) -> Item:
        if not isinstance(item_id, str) or item_id not in self.by_id:
            raise LabelError(404, f"unknown item {item_id!r}")
        return self.by_id[item_id]


def _rank_record(item: Item, annotator: str, ranking: Any) -> dict[str, Any]:
    if not isinstance(ranking, list) or any(isinstance(r, bool) or not isinstance(r, int) for r in ranking):
        raise LabelError(400, "ranking must be a list of response indices (integers), best first")
    if sorted(ranking) != list(range(len(item.responses))):
        raise LabelError(400, f"ranking {ranking} must list each of the {len(item.responses)} response indices "
                              "0.." f"{len(item.responses) - 1} exactly once, best first (ties are not allowed)")
    return Comparison(prompt=item.prompt, responses=item.responses, ranking=tuple(ranking),
                      annotator=annotator, messages=item.messages).to_json()


def _thumbs_record(item: Item, annotator: str, label: Any) -> dict[str, Any]:
    if not isinstance(label, bool):
        raise LabelError(400, "label must be true (thumbs up) or false (thumbs down)")
    (response,) = item.responses
    messages = None if item.messages is None else (*item.messages, Message("assistant", response))
    return Feedback(prompt=item.prompt, completion=response, label=label, annotator=annotator,
                    messages=messages).to_json()
