"""The labelling server under attack, over real sockets: request smuggling through unread
bodies, cross-site writes (CSRF), side-effecting GETs, weak tokens, bad Content-Length, deep
JSON, annotator ids with a trailing newline, connection bursts and idle connections, a torn
last line written at runtime, and U+2028 / U+2029 / U+0085 in the text."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest
from conftest import write_jsonl
from test_label_server import Client

from rlhfkit.cli import main
from rlhfkit.config import ConfigError
from rlhfkit.data import read_jsonl, read_records
from rlhfkit.feedback.label_server import MAX_BODY, MAX_JSON_DEPTH, LabelServer, json_depth
from rlhfkit.feedback.label_store import LabelStore, load_items

SAMPLES = [
    {"prompt": "this movie", "responses": [" was great .", " was bad .", " was fine ."]},
    {"prompt": "the plot", "responses": [" was dull .", " was fun ."]},
]
TOKEN = "a-token-of-24-characters"


@pytest.fixture
def samples(tmp_path) -> Path:
    return write_jsonl(tmp_path / "samples.jsonl", SAMPLES)


def start(store: LabelStore, **kw) -> tuple[LabelServer, Client]:
    server = LabelServer(store, "127.0.0.1", 0, **kw)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, Client(f"http://127.0.0.1:{server.server_address[1]}", kw.get("token"))


@pytest.fixture
def served(tmp_path, samples):
    servers = []

    def make(**kw):
        server, client = start(LabelStore(tmp_path / "labels.jsonl", load_items(samples)), **kw)
        servers.append(server)
        return server, client

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


def http(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None, length: bool = True) -> bytes:
    """One HTTP/1.1 request as bytes; Content-Length is added for a body unless `length` is off."""
    head = {"Host": "127.0.0.1", **({"Content-Length": str(len(body))} if body and length else {}), **(headers or {})}
    return f"{method} {path} HTTP/1.1\r\n".encode() + b"".join(f"{k}: {v}\r\n".encode() for k, v in head.items()) \
        + b"\r\n" + body


def exchange(port: int, data: bytes, wait: float = 5.0) -> tuple[bytes, bool]:
    """Send `data` on one connection; (all bytes received, whether the server closed it within `wait` s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except TimeoutError:
            return got, False
    return got, True


def statuses(raw: bytes) -> list[int]:
    """The status of each response in `raw`, read one after another by their Content-Length."""
    found = []
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        status_line, *fields = head.decode("latin-1").split("\r\n")
        found.append(int(status_line.split()[1]))
        length = [v for k, _, v in (f.partition(":") for f in fields) if k.lower() == "content-length"]
        raw = raw[int(length[0]):]
    return found


# ---------------------------------------------------------------------- 1. desync


@pytest.mark.parametrize("case", ["415 text/plain", "405 on the page", "401 without the token"])
def test_an_error_never_leaves_its_body_to_be_read_as_a_second_request(served, samples, case):
    """A cross-site `no-cors` POST (text/plain, no preflight) whose body is a whole JSON judge
    request: the server must answer the outer request only, then close; nothing is written."""
    server, _ = served(token=TOKEN) if case.startswith("401") else served()
    item = load_items(samples)[0].id
    judgement = json.dumps({"annotator": "attacker", "item": item, "ranking": [0, 1, 2]}).encode()
    # the inner request is valid in every way (token, CSRF, JSON): only the framing stops it
    inner = http("POST", "/api/judge", judgement, {"Content-Type": "application/json", "X-Label-Token": TOKEN,
                                                   "X-CSRF-Token": server.csrf})
    path = "/index.html" if case.startswith("405") else "/api/judge"
    raw, closed = exchange(server.server_address[1], http("POST", path, inner, {"Content-Type": "text/plain"}))
    assert statuses(raw) == [int(case[:3])] and closed
    assert b"Connection: close" in raw
    assert not server.store.out.exists() or read_jsonl(server.store.out) == []


def test_a_good_request_keeps_the_connection_and_an_error_closes_it(served):
    server, _ = served()
    port = server.server_address[1]
    raw, closed = exchange(port, http("GET", "/api/progress") * 2, wait=1.0)
    assert statuses(raw) == [200, 200] and not closed  # keep-alive works for valid requests
    raw, closed = exchange(port, http("GET", "/api/nothing") + http("GET", "/api/progress"))
    assert statuses(raw) == [404] and closed


# ---------------------------------------------------------------------- 2. CSRF and content type


def test_writes_need_json_and_the_session_csrf_token(served):
    server, c = served()
    status, session = c.call("GET", "/api/session")
    assert status == 200 and session["csrf"] == server.csrf and len(server.csrf) >= 32
    view = c.next("alice")
    body = {"annotator": "alice", "item": view["item"], "ranking": [0, 1, 2]}
    for csrf in ("", "wrong", server.csrf[:-1]):
        status, res = c.call("POST", "/api/judge", body, headers={"X-CSRF-Token": csrf})
        assert status == 403 and "CSRF" in res["error"]
    assert c.call("POST", "/api/judge", body, headers={"Content-Type": "text/plain"})[0] == 415
    assert c.call("POST", "/api/undo", {"annotator": "alice"}, headers={"X-CSRF-Token": ""})[0] == 403
    assert not server.store.out.exists() or read_jsonl(server.store.out) == []
    assert c.call("POST", "/api/judge", body)[0] == 200
    other, _ = served()
    assert other.csrf != server.csrf  # a token per server run


def test_the_session_answer_grants_no_cross_origin_reads(served):
    server, _ = served()
    evil = {"Origin": "https://evil.example", "Connection": "close"}
    raw, _ = exchange(server.server_address[1], http("GET", "/api/session", headers=evil))
    assert statuses(raw) == [200] and b"access-control" not in raw.lower()
    raw, _ = exchange(server.server_address[1], http("OPTIONS", "/api/judge", headers={
        **evil, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type,x-csrf-token"}))
    assert statuses(raw)[0] >= 400 and b"access-control" not in raw.lower()  # no preflight is ever granted


# ---------------------------------------------------------------------- 3. GETs change nothing


def test_get_requests_lease_nothing(served, samples):
    server, c = served()
    first = load_items(samples)[0].id
    port = server.server_address[1]
    for path in ("/api/next?annotator=mallory", "/api/progress?annotator=mallory", "/api/session", "/"):
        exchange(port, http("GET", path, headers={"Connection": "close"}))
    assert c.call("GET", "/api/next?annotator=mallory")[0] == 405
    assert c.next("alice")["item"] == first  # still free: no GET leased it


# ---------------------------------------------------------------------- 4. tokens


@pytest.mark.parametrize("token", ["", "short", "fifteen-chars-x", "sixteen chars ok"])
def test_empty_short_or_unprintable_tokens_are_refused(tmp_path, samples, token):
    store = LabelStore(tmp_path / "labels.jsonl", load_items(samples))
    with pytest.raises(ConfigError, match="at least 16"):
        LabelServer(store, "0.0.0.0", 0, token=token)
    server = LabelServer(store, "0.0.0.0", 0, token="sixteen-chars-ok")
    assert server.token == "sixteen-chars-ok"
    server.server_close()


def test_cli_refuses_an_empty_token_in_one_line(tmp_path, samples, capsys, monkeypatch):
    import socketserver

    def serve_forever(self, *a, **k):
        raise AssertionError(f"serving on {self.server_address} with token {self.token!r}")

    monkeypatch.setattr(socketserver.BaseServer, "serve_forever", serve_forever)
    out = tmp_path / "labels.jsonl"
    assert main(["label", "--samples", str(samples), "--out", str(out), "--host", "0.0.0.0", "--port", "0",
                 "--token", ""]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--token must be at least 16" in err


# ---------------------------------------------------------------------- 5. Content-Length


@pytest.mark.parametrize("headers, status", [
    ({"Content-Length": "-1"}, 400),
    ({"Content-Length": "+5"}, 400),
    ({"Content-Length": "1_0"}, 400),
    ({"Content-Length": "abc"}, 400),
    ({"Content-Length": str(MAX_BODY + 1)}, 413),
    ({"Content-Length": "99999999999"}, 413),
    ({}, 411),
    ({"Transfer-Encoding": "chunked"}, 501),
])
def test_bad_content_length_is_refused_without_reading_the_body(served, headers, status):
    """Only the head is sent and the socket stays open for writing: a server that tried to read
    a body would wait (Content-Length -1 read until the client hung up); the answer must come
    at once, and close the connection."""
    server, _ = served()
    head = http("POST", "/api/undo", headers={"Content-Type": "application/json", "X-CSRF-Token": server.csrf, **headers})
    raw, closed = exchange(server.server_address[1], head, wait=5.0)
    assert statuses(raw) == [status] and closed


def test_a_duplicated_content_length_is_refused(served):
    server, _ = served()
    head = b"POST /api/undo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" \
           b"Content-Length: 2\r\nContent-Length: 40\r\n\r\n{}"
    raw, closed = exchange(server.server_address[1], head)
    assert statuses(raw) == [400] and closed


# ---------------------------------------------------------------------- 6. deep JSON, 500s


def test_json_depth_counts_brackets_outside_strings():
    assert json_depth('{"a": "[[[[{{", "b": [1, {"c": "\\"]]"}]}') == 3
    assert json_depth("[]") == 1 and json_depth('"[["') == 0 and json_depth("1") == 0


def test_deep_json_is_refused_with_400(served):
    server, c = served()
    deep = b"[" * 30000 + b"]" * 30000  # 60,000 bytes, under MAX_BODY
    status, res = c.call("POST", "/api/judge", raw=deep)
    assert status == 400 and "deeper" in res["error"]
    nested = {"annotator": "alice"}
    for _ in range(MAX_JSON_DEPTH):  # one level more than allowed
        nested = {"x": nested}
    assert c.call("POST", "/api/undo", nested)[0] == 400
    ok = {"annotator": "alice", "x": json.loads("[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1))}
    assert json_depth(json.dumps(ok)) == MAX_JSON_DEPTH
    assert c.call("POST", "/api/undo", ok)[0] == 409  # within the limit: parsed ("nothing to undo")


def test_a_500_says_nothing_of_the_exception(served, monkeypatch, capfd):
    server, c = served()

    def broken(annotator=None):
        raise RuntimeError("secret detail /home/alice/labels.jsonl")

    monkeypatch.setattr(server.store, "progress", broken)
    status, res = c.call("GET", "/api/progress?annotator=alice")
    assert status == 500 and "secret" not in json.dumps(res) and "RuntimeError" not in json.dumps(res)
    assert "secret detail" in capfd.readouterr().err  # the server's log has it


# ---------------------------------------------------------------------- 7. annotator ids


@pytest.mark.parametrize("who", ["alice\n", "alice\r\n", "\nalice", "al ice", "a" * 65])
def test_annotator_id_must_match_in_full(served, who):
    server, c = served()
    item = c.next("alice")["item"]
    status, res = c.call("POST", "/api/judge", {"annotator": who, "item": item, "ranking": [0, 1, 2]})
    assert status == 400 and "annotator id" in res["error"]
    assert c.call("POST", "/api/next", {"annotator": who})[0] == 400
    assert not server.store.out.exists() or read_jsonl(server.store.out) == []


# ---------------------------------------------------------------------- 8. bursts and idle connections


def listen_overflows() -> int | None:
    """Linux's count of connections dropped because a listen queue was full (None elsewhere)."""
    try:
        names, values = [line.split() for line in Path("/proc/net/netstat").read_text().split("\n")
                         if line.startswith("TcpExt:")][:2]
    except (OSError, ValueError):
        return None
    return int(dict(zip(names, values, strict=True))["ListenOverflows"])


def test_a_burst_of_50_connections_is_served_in_full(served):
    """50 clients connect at the same instant; with a backlog of 5 the kernel dropped most of
    them (reset, or a SYN retried seconds later). Every one must get its 200 and the kernel's
    listen-overflow count must not move."""
    server, _ = served()
    port, n = server.server_address[1], 50
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def one(i: int) -> None:
        barrier.wait()
        try:
            results[i] = statuses(exchange(port, http("GET", "/api/progress", headers={"Connection": "close"}))[0])
        except OSError as e:
            results[i] = repr(e)

    before = listen_overflows()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [[200]] * n
    if before is not None:
        assert listen_overflows() == before


def test_idle_and_stalled_connections_are_dropped(served):
    """idle_timeout 0.3 s against a client that waits 5 s: only the server can close it in time."""
    server, _ = served(idle_timeout=0.3)
    port = server.server_address[1]
    raw, closed = exchange(port, b"", wait=5.0)  # connects, says nothing
    assert raw == b"" and closed
    raw, closed = exchange(port, http("GET", "/api/progress"), wait=5.0)  # keep-alive, then idle
    assert statuses(raw) == [200] and closed
    head = http("POST", "/api/undo", headers={"Content-Type": "application/json", "Content-Length": "50",
                                              "X-CSRF-Token": server.csrf})
    raw, closed = exchange(port, head + b'{"annot', wait=5.0)  # the body stalls
    assert raw == b"" and closed


# ---------------------------------------------------------------------- 9. torn last line at runtime


def test_a_torn_last_line_written_at_runtime_does_not_stop_the_server(served, capsys):
    server, c = served()
    out = server.store.out
    first = c.next("alice")
    assert c.judge("alice", first["item"], [0, 1, 2])[0] == 200
    with open(out, "ab") as f:  # another process dies mid-record (no lock, no newline)
        f.write('{"prompt": "this mo\u2028'.encode())
    status, res = c.call("GET", "/api/progress?annotator=alice")
    assert status == 200 and res["progress"]["done"] == 1
    view = c.next("bob")
    assert view["item"] != first["item"]
    assert c.judge("bob", view["item"], [1, 0])[0] == 200
    assert [r["annotator"] for r in read_jsonl(out)] == ["alice", "bob"]  # fragment cut, file valid
    assert "dropping a torn last line" in capsys.readouterr().out
    with open(out, "ab") as f:  # a whole record that only lacks its newline is kept
        f.write(json.dumps({**read_jsonl(out)[0], "annotator": "carol"}).encode())
    assert c.call("GET", "/api/progress?annotator=carol")[1]["progress"]["mine"] == 1
    assert c.call("POST", "/api/undo", {"annotator": "bob"})[0] == 200
    assert [r.annotator for r in read_records(str(out), "comparison")] == ["alice", "carol"]


# ---------------------------------------------------------------------- 10. line separators in text


def test_unicode_line_separators_survive_the_api_a_restart_and_agreement(tmp_path, capsys):
    """U+2028, U+2029 and U+0085 are legal raw in JSON strings and `str.splitlines()` splits at
    them. The samples file holds them raw; a judgement of them goes through HTTP, then a restart
    reads the file back, and `rlhfkit agreement` reads it too."""
    text = "line\u2028sep\u2029para\u0085next"
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"prompt": f"p {text}", "responses": [f"a {text}", f"b {text}"]},
                                  ensure_ascii=False) + "\n", encoding="utf-8")
    assert "\u2028" in samples.read_text(encoding="utf-8")  # written raw, not escaped
    out = tmp_path / "labels.jsonl"
    for who in ("alice", "bob"):
        server, c = start(LabelStore(out, load_items(samples), overlap=1.0))  # a restart per annotator
        try:
            assert c.call("GET", f"/api/progress?annotator={who}")[0] == 200
            view = c.next(who)
            assert view["prompt"] == f"p {text}"
            assert c.judge(who, view["item"], [0, 1])[0] == 200
            assert c.call("GET", f"/api/progress?annotator={who}")[1]["progress"]["mine"] == 1
        finally:
            server.shutdown()
            server.server_close()
    assert "\u2028" in out.read_text(encoding="utf-8")
    assert [r["responses"][0] for r in read_jsonl(out)] == [f"a {text}"] * 2
    capsys.readouterr()
    assert main(["agreement", str(out)]) == 0
    assert "pairwise agreement: 100.0% over 1 pair decisions" in capsys.readouterr().out
