"""Human labelling: a small local web server where people rank responses (`rlhfkit label`).

    rlhfkit label --samples samples.jsonl --out labels.jsonl [--host 127.0.0.1 --port 8765]

The page (plain HTML/JS/CSS in `static/`, nothing fetched from elsewhere) shows one prompt and
its K responses in an order shuffled per annotator; the annotator ranks them by clicking in
order of preference, by keys 1..9, or by dragging the ranked list (K = 2: one key or click
picks the better one). Ties are not allowed. Skip, undo of the last judgement, progress.

Durability and concurrency, the parts a labelling session must not get wrong:
- each judgement is appended as one JSONL line and fsynced before the page is told "saved"
  (`data.append_jsonl`), so a crash or a closed tab loses nothing;
- every change happens under a thread lock *and* an OS lock (`fcntl.flock` on `OUT.lock`), and
  state is re-read from the file inside the lock, so two annotators on one server, or two server
  processes on one file, never interleave or lose lines;
- undo rewrites the file without the annotator's last line (temp file + rename, under the lock);
- a restart reads the file and carries on: done items are not shown again.

Records are `Comparison` JSON (`prompt`, `responses`, `ranking` best first, `annotator`) plus
`item` (stable id) and `time`, so `rlhfkit reward` and `rlhfkit dpo` read the file as is, and
`rlhfkit agreement` uses `item` to find items judged by several people (`overlap`).

Security: bound to 127.0.0.1 by default (and then only Host headers naming this machine are
served, which stops DNS-rebinding pages). Any other host requires an access token (one is
generated when none is given); API calls carry it as `X-Label-Token` or `?token=`. Writes
require a JSON body, which browsers will not send cross-site without a CORS preflight this
server never grants. Invalid requests get a 4xx with a message and write nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from rlhfkit.data import Comparison, DataError, append_jsonl

STATIC = Path(__file__).with_name("static")
STATIC_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "app.css": "text/css; charset=utf-8"}
ANNOTATOR_ID = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
LEASE_SECONDS = 600  # an item shown to one annotator is not offered to another for this long
MAX_BODY = 1 << 16


class LabelError(Exception):
    """A request the server refuses; carries the HTTP status and a message for the page."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# ---------------------------------------------------------------------- items


@dataclass(frozen=True)
class Item:
    id: str
    prompt: str
    responses: tuple[str, ...]
    messages: tuple | None = None


def load_items(path: str | Path) -> list[Item]:
    """Items to label from JSONL: `{prompt|messages, responses: [>= 2 strings]}` (what `rlhfkit
    sample --k K` writes; comparison records work too, their ranking is ignored). Ids are a hash
    of the content, so they survive reordering the file; repeats get a -2, -3 suffix."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", source=str(path))
    items: list[Item] = []
    seen: dict[str, int] = {}
    dropped = 0
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON: {e.msg}", source=str(path), line=n) from None
        if not isinstance(obj, dict):
            raise DataError("expected a JSON object", source=str(path), line=n)
        if "responses" not in obj and {"chosen", "rejected"} <= obj.keys():
            obj = {**obj, "responses": [obj["chosen"], obj["rejected"]]}
        if isinstance(obj.get("responses"), list):  # an empty sample cannot be judged: leave it out
            kept = [r for r in obj["responses"] if not (isinstance(r, str) and not r.strip())]
            if len(kept) < 2 <= len(obj["responses"]):
                dropped += 1
                continue
            obj = {**obj, "responses": kept}
        try:  # the record type validates prompt/messages and responses
            rec = Comparison.from_json({**obj, "ranking": list(range(len(obj.get("responses") or [])))})
        except DataError as e:
            raise e.at(str(path), line=n) from None
        key = hashlib.sha1(json.dumps([rec.prompt, rec.responses]).encode()).hexdigest()[:12]
        seen[key] = seen.get(key, 0) + 1
        items.append(Item(key if seen[key] == 1 else f"{key}-{seen[key]}", rec.prompt, rec.responses, rec.messages))
    if dropped:
        print(f"[label] left out {dropped} record(s) of {path} with fewer than 2 non-empty responses")
    if not items:
        raise DataError("no items with at least 2 non-empty responses", source=str(path))
    return items


def _unit(*parts: str) -> float:
    """A deterministic number in [0, 1) from strings (overlap choice, display shuffles)."""
    return int(hashlib.sha1("\x00".join(parts).encode()).hexdigest()[:12], 16) / 16**12


# ---------------------------------------------------------------------- the store


@dataclass
class LabelStore:
    """The output file, its locks, and who has judged what. Safe across threads and processes."""

    out: Path
    items: list[Item]
    overlap: float = 0.0  # share of items that need `overlap_annotators` different annotators
    overlap_annotators: int = 2
    seed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _leases: dict[str, tuple[str, float]] = field(default_factory=dict, repr=False)  # item -> (annotator, expiry)
    _skipped: dict[str, set[str]] = field(default_factory=dict, repr=False)  # annotator -> items

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap <= 1.0:
            raise ValueError(f"overlap must be a share in [0, 1], got {self.overlap}")
        if self.overlap_annotators < 2:
            raise ValueError(f"overlap_annotators must be at least 2, got {self.overlap_annotators}")
        self.out = Path(self.out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.by_id = {it.id: it for it in self.items}
        self.lock_path = self.out.with_name(f".{self.out.name}.lock")
        with self._locked():
            self._repair()
            records = self._read()
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
        """Drop a torn final line (a crash mid-write) so the file stays valid JSONL."""
        if not self.out.exists():
            return
        data = self.out.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            try:
                json.loads(data[cut:])
                with open(self.out, "ab") as f:  # a complete last record that only lacks its newline
                    f.write(b"\n")
            except json.JSONDecodeError:
                print(f"[label] dropping a torn last line of {self.out} ({len(data) - cut} bytes)")
                with open(self.out, "r+b") as f:
                    f.truncate(cut)
                    os.fsync(f.fileno())

    def _read(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text(encoding="utf-8").splitlines() if line.strip()]

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
        """The item as the page shows it: responses in a per-annotator shuffled order."""
        order = sorted(range(len(item.responses)), key=lambda i: _unit(str(self.seed), annotator, item.id, str(i)))
        return {"item": item.id, "prompt": item.prompt, "k": len(item.responses),
                "responses": [{"index": i, "text": item.responses[i]} for i in order],
                "progress": self._progress(records, annotator)}

    def next_item(self, annotator: str) -> dict[str, Any]:
        """The annotator's current item (a reload shows the same one), else the first open item."""
        _check_annotator(annotator)
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
            return {"item": None, "done": True, "progress": self._progress(records, annotator)}

    def judge(self, annotator: str, item_id: Any, ranking: Any) -> dict[str, Any]:
        """Validate and append one judgement; returns the written record and progress."""
        _check_annotator(annotator)
        item = self._item(item_id)
        if not isinstance(ranking, list) or any(isinstance(r, bool) or not isinstance(r, int) for r in ranking):
            raise LabelError(400, "ranking must be a list of response indices (integers), best first")
        if sorted(ranking) != list(range(len(item.responses))):
            raise LabelError(400, f"ranking {ranking} must list each of the {len(item.responses)} response indices "
                                  "0.." f"{len(item.responses) - 1} exactly once, best first (ties are not allowed)")
        record = Comparison(prompt=item.prompt, responses=item.responses, ranking=tuple(ranking),
                            annotator=annotator, messages=item.messages).to_json()
        record.update(item=item.id, time=round(time.time(), 3))
        with self._locked():
            records = self._read()
            if any(r.get("item") == item.id and r.get("annotator") == annotator for r in records):
                raise LabelError(409, f"annotator {annotator!r} has already judged item {item.id}; undo it first to change it")
            append_jsonl(self.out, record)  # flushed and fsynced before we answer
            records.append(record)
            self._leases.pop(item.id, None)
            return {"saved": record, "progress": self._progress(records, annotator)}

    def skip(self, annotator: str, item_id: Any) -> dict[str, Any]:
        """Do not offer this item to this annotator again (in this server's lifetime)."""
        _check_annotator(annotator)
        item = self._item(item_id)
        with self._locked():
            self._skipped.setdefault(annotator, set()).add(item.id)
            if self._leases.get(item.id, ("",))[0] == annotator:
                del self._leases[item.id]
            return {"skipped": item.id, "progress": self._progress(self._read(), annotator)}

    def undo(self, annotator: str) -> dict[str, Any]:
        """Remove the annotator's most recent judgement; its item becomes their current item."""
        _check_annotator(annotator)
        with self._locked():
            records = self._read()
            mine = [i for i, r in enumerate(records) if r.get("annotator") == annotator]
            if not mine:
                raise LabelError(409, f"annotator {annotator!r} has no judgement to undo")
            removed = records.pop(mine[-1])
            tmp = self.out.with_name(f".{self.out.name}.undo-{os.getpid()}")
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.out)
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


def _check_annotator(annotator: Any) -> None:
    if not isinstance(annotator, str) or not ANNOTATOR_ID.match(annotator):
        raise LabelError(400, "annotator id must be 1-64 characters of letters, digits, _ . @ -")


# ---------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    server: LabelServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet unless asked
        if self.server.verbose:
            super().log_message(fmt, *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def _check_host(self) -> None:
        if self.server.loopback_only:
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
            if host not in LOOPBACK:
                raise LabelError(403, f"this server answers only to localhost, not Host {host!r}")

    def _check_token(self, query: dict[str, list[str]]) -> None:
        token = self.server.token
        if token is None:
            return
        given = self.headers.get("X-Label-Token") or (query.get("token") or [""])[0]
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise LabelError(401, "missing or wrong access token (open the URL the server printed, with ?token=...)")

    def _handle(self, method: str) -> None:
        try:
            self._check_host()
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            route = url.path
            if route in ("/", "/index.html") or route.startswith("/static/"):
                if method != "GET":
                    raise LabelError(405, f"{method} is not allowed on {route}")
                name = "index.html" if route in ("/", "/index.html") else route.removeprefix("/static/")
                if name not in STATIC_FILES:
                    raise LabelError(404, f"no such file {route}")
                return self._send(200, (STATIC / name).read_bytes(), STATIC_FILES[name])
            if not route.startswith("/api/"):
                raise LabelError(404, f"no such page {route}")
            self._check_token(query)
            store = self.server.store
            annotator = (query.get("annotator") or [None])[0]
            if method == "GET":
                handlers = {"/api/next": lambda: store.next_item(annotator),
                            "/api/progress": lambda: {"progress": store.progress(annotator)}}
            else:
                body = self._body()
                annotator = body.get("annotator")
                handlers = {"/api/judge": lambda: store.judge(annotator, body.get("item"), body.get("ranking")),
                            "/api/skip": lambda: store.skip(annotator, body.get("item")),
                            "/api/undo": lambda: store.undo(annotator)}
            if route not in handlers:
                known = {"/api/next", "/api/progress", "/api/judge", "/api/skip", "/api/undo"}
                raise LabelError(405 if route in known else 404,
                                 f"{method} is not allowed on {route}" if route in known else f"no such endpoint {route}")
            self._json(200, handlers[route]())
        except LabelError as e:
            self._json(e.status, {"error": e.message})
        except Exception as e:  # never leave the page hanging without an answer
            self._json(500, {"error": f"server error: {type(e).__name__}: {e}"})

    def _body(self) -> dict[str, Any]:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise LabelError(415, "send the request body as JSON (Content-Type: application/json)")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise LabelError(400, "bad Content-Length") from None
        if length > MAX_BODY:
            raise LabelError(413, f"request body over {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise LabelError(400, "request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise LabelError(400, "request body must be a JSON object")
        return body

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")


class LabelServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, store: LabelStore, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
                 verbose: bool = False):
        self.loopback_only = host in LOOPBACK
        if token is None and not self.loopback_only:
            token = secrets.token_urlsafe(16)  # anything beyond localhost needs a token
        self.store, self.token, self.verbose = store, token, verbose
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}/" + (f"?token={self.token}" if self.token else "")


def serve(samples: str | Path, out: str | Path, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
          overlap: float = 0.0, overlap_annotators: int = 2, seed: int = 0, verbose: bool = False) -> None:
    """Run the labelling server until interrupted (Ctrl-C)."""
    store = LabelStore(Path(out), load_items(samples), overlap, overlap_annotators, seed)
    server = LabelServer(store, host, port, token, verbose)
    p = store.progress()
    print(f"[label] {p['items']} items, {p['done']}/{p['total']} judgements done; writing to {out}")
    print(f"[label] open {server.url}   (Ctrl-C to stop; every judgement is already saved)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def build_human(**_: Any):
    """Registry entry for `annotator.name: human`: rankings come from the labelling page, not a call."""
    raise ValueError("the human annotator works through the labelling page: write samples with "
                     "`rlhfkit sample --k K --out samples.jsonl`, then run `rlhfkit label --samples samples.jsonl "
                     "--out labels.jsonl` and train on labels.jsonl")

