"""Human labelling: a small local web server where people rank responses or give them a
thumbs up or down (`rlhfkit label`).

    rlhfkit label --samples samples.jsonl --out labels.jsonl [--host 127.0.0.1 --port 8765]
    rlhfkit label --mode thumbs --samples samples.jsonl --out feedback.jsonl

The page (plain HTML/JS/CSS in `static/`, nothing fetched from elsewhere; `app.js` plus one
script per mode) shows one prompt and, in rank mode, its K responses in an order shuffled per
annotator; the annotator ranks them by clicking in order of preference, by keys 1..9, or by
dragging the ranked list (K = 2: one key or click picks the better one). Ties are not allowed.
In thumbs mode it shows one response and takes 👍 / 👎 (keys ↑ or Y / ↓ or N). Both modes:
skip, undo of the last judgement, progress, resume after a restart.
The file and its locking live in `label_store.py`; this module is the HTTP side.

API (JSON in and out):
    GET  /api/session                 -> {"csrf": token for the writes below, "mode": "rank"|"thumbs"}
    GET  /api/progress?annotator=ID   -> {"progress": {...}}
    POST /api/next   {annotator}              the annotator's current item (leases it to them)
    POST /api/judge  {annotator, item, ranking}     rank mode; thumbs mode: {annotator, item, label: bool}
    POST /api/skip   {annotator, item}
    POST /api/undo   {annotator}

Security model. Trusted: the people who can open the page (with the token, when one is set) and
the local machine's users (on a shared machine, set --token). Untrusted: any other web page
the annotator's browser visits, and, beyond loopback, the network.
- Bound to 127.0.0.1 by default, and then only Host headers naming this machine are served,
  which stops DNS-rebinding pages. Any other host requires an access token of at least
  MIN_TOKEN_CHARS visible ASCII characters (one is generated when none is given); an empty or
  short token is refused at start. API calls carry it as `X-Label-Token` or `?token=`.
- GETs change nothing. Every change is a POST that carries `Content-Type: application/json`
  and an `X-CSRF-Token` header holding the token of GET /api/session (random per server run).
  A cross-site page can send neither that content type nor a custom header without a CORS
  preflight, which this server never grants, and cannot read /api/session to learn the token.
- HTTP framing is strict, so one request's bytes are never read as another request (request
  smuggling from a cross-site `no-cors` POST whose body is a second request): Content-Length
  must be plain digits, at most MAX_BODY, present on every POST; Transfer-Encoding is refused.
  A request body is read in full before the answer, and every error answer closes the connection.
- JSON nesting deeper than MAX_JSON_DEPTH is refused before parsing; a 500 answer never holds
  exception text (that goes to the server's stderr).
- The listen backlog holds bursts of connections; a connection idle for `idle_timeout` seconds
  (IDLE_TIMEOUT by default) is dropped, so idle sockets cannot hold threads forever.
Invalid requests get a 4xx with a message and write nothing.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import sys
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from rlhfkit.config import ConfigError
from rlhfkit.feedback.label_store import LabelError, LabelStore, load_items

STATIC = Path(__file__).with_name("static")
STATIC_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "rank.js": "text/javascript; charset=utf-8", "thumbs.js": "text/javascript; charset=utf-8",
                "app.css": "text/css; charset=utf-8"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_BODY = 1 << 16  # our requests are a few hundred bytes
MAX_JSON_DEPTH = 8  # our requests nest 2 deep ({"ranking": [...]}); json.loads recurses per level
MIN_TOKEN_CHARS = 16
IDLE_TIMEOUT = 30.0  # seconds a connection may sit without sending a full request
TOKEN = re.compile(r"[!-~]+")  # visible ASCII: it goes in a URL and an HTTP header
CONTENT_LENGTH = re.compile(r"[0-9]{1,12}")  # no sign, no "_", no spaces inside: int() takes all those
JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
GET_ROUTES = ("/api/session", "/api/progress")
POST_ROUTES = ("/api/next", "/api/judge", "/api/skip", "/api/undo")


def json_depth(text: str) -> int:
    """Deepest nesting of [ and { in JSON text, brackets inside strings not counted."""
    depth = deepest = 0
    for ch in re.findall(r"[][{}]", JSON_STRING.sub('""', text)):
        depth += 1 if ch in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def parse_object(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object, refusing deep nesting before json.loads recurses into it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise LabelError(400, "request body is not UTF-8") from None
    if json_depth(text) > MAX_JSON_DEPTH:
        raise LabelError(400, f"request body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        raise LabelError(400, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise LabelError(400, "request body must be a JSON object")
    return body


class _Handler(BaseHTTPRequestHandler):
    server: LabelServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout  # StreamRequestHandler puts it on the socket
        super().setup()

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
        if status >= 400:  # also sets close_connection: nothing after a refused request is read
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def _read_body(self, method: str) -> bytes:
        """The whole request body, after checking its framing (nothing is read when it is bad)."""
        if self.headers.get("Transfer-Encoding") is not None:
            raise LabelError(501, "Transfer-Encoding is not supported; send a Content-Length")
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            if method == "POST":
                raise LabelError(411, "a POST needs a Content-Length header")
            return b""
        if len(lengths) > 1 or not CONTENT_LENGTH.fullmatch(lengths[0].strip()):
            raise LabelError(400, "bad Content-Length: one header of digits only")
        length = int(lengths[0])
        if length > MAX_BODY:
            raise LabelError(413, f"request body over {MAX_BODY} bytes")
        raw = self.rfile.read(length)
        if len(raw) < length:
            raise LabelError(400, "request body shorter than its Content-Length")
        return raw

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

    def _check_write(self) -> None:
        """A write must be JSON and carry this server's CSRF token: neither can come cross-site."""
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise LabelError(415, "send the request body as JSON (Content-Type: application/json)")
        given = self.headers.get("X-CSRF-Token") or ""
        if not hmac.compare_digest(given.encode(), self.server.csrf.encode()):
            raise LabelError(403, "missing or stale X-CSRF-Token header (reload the page)")

    def _handle(self, method: str) -> None:
        try:
            raw = self._read_body(method)
            self._check_host()
            url = urlsplit(self.path)
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
            query = parse_qs(url.query)
            self._check_token(query)
            if route not in GET_ROUTES + POST_ROUTES:
                raise LabelError(404, f"no such endpoint {route}")
            if route not in (GET_ROUTES if method == "GET" else POST_ROUTES if method == "POST" else ()):
                raise LabelError(405, f"{method} is not allowed on {route}")
            self._json(200, self._api(method, route, query, raw))
        except LabelError as e:
            self._json(e.status, {"error": e.message})
        except TimeoutError:  # the client stopped sending mid-body: drop it without an answer
            self.close_connection = True
        except Exception:  # a bug: the traceback goes to the server's log, never to the client
            print(f"[label] server error on {method} {self.path!r}:", file=sys.stderr)
            traceback.print_exc()
            self._json(500, {"error": "server error (details are in the server's log)"})

    def _api(self, method: str, route: str, query: dict[str, list[str]], raw: bytes) -> dict[str, Any]:
        store = self.server.store
        if method == "GET":
            if route == "/api/session":
                return {"csrf": self.server.csrf, "mode": store.mode}
            return {"progress": store.progress((query.get("annotator") or [None])[0])}
        self._check_write()
        body = parse_object(raw)
        annotator = body.get("annotator")
        if route == "/api/next":
            return store.next_item(annotator)
        if route == "/api/judge":
            return store.judge(annotator, body.get("item"), body.get("ranking"), body.get("label"))
        if route == "/api/skip":
            return store.skip(annotator, body.get("item"))
        return store.undo(annotator)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")


class LabelServer(ThreadingHTTPServer):
    """The page and its API over `store`, bound to host:port (port 0: any free port). `token`:
    the access token (None: none on loopback, generated elsewhere); `idle_timeout`: seconds a
    connection may wait between or inside requests before it is dropped."""

    daemon_threads = True
    request_queue_size = 128  # listen backlog; the default 5 resets bursts of connections

    def __init__(self, store: LabelStore, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
                 verbose: bool = False, idle_timeout: float = IDLE_TIMEOUT):
        if token is not None and (len(token) < MIN_TOKEN_CHARS or not TOKEN.fullmatch(token)):
            raise ConfigError(f"--token must be at least {MIN_TOKEN_CHARS} visible ASCII characters without spaces "
                              f"(got {len(token)} characters); leave it out to have one generated")
        self.loopback_only = host in LOOPBACK
        if token is None and not self.loopback_only:
            token = secrets.token_urlsafe(18)  # anything beyond localhost needs a token (24 characters)
        self.store, self.token, self.verbose, self.idle_timeout = store, token, verbose, idle_timeout
        self.csrf = secrets.token_urlsafe(32)
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}/" + (f"?token={quote(self.token, safe='')}" if self.token else "")


def serve(samples: str | Path, out: str | Path, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
          overlap: float = 0.0, overlap_annotators: int = 2, seed: int = 0, verbose: bool = False,
          mode: str = "rank") -> None:
    """Run the labelling server until interrupted (Ctrl-C)."""
    store = LabelStore(Path(out), load_items(samples, mode), overlap, overlap_annotators, seed, mode)
    server = LabelServer(store, host, port, token, verbose)
    p = store.progress()
    print(f"[label] {mode} mode: {p['items']} items, {p['done']}/{p['total']} judgements done; writing to {out}")
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
