"""Labelling server over HTTP (no browser): judgements, validation, undo, resume, tokens,
two annotators and two processes on one file, and the output feeding `reward`/`dpo` readers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import build_tiny_model, write_jsonl

from rlhfkit.data import read_jsonl, read_records
from rlhfkit.feedback.agreement import agreement_report, read_labels
from rlhfkit.feedback.label_server import LabelServer
from rlhfkit.feedback.label_store import LabelStore, load_items

SAMPLES = [
    {"prompt": "this movie", "responses": [" was great .", " was bad .", " was fine ."]},
    {"prompt": "the plot", "responses": [" was dull .", " was fun ."], "finished": [True, True]},
    {"prompt": "i liked", "responses": [" it .", " the cast .", " the music .", " the ending ."]},
    {"prompt": "the acting", "responses": ["", " was good ."]},  # one empty response: left out
]


class Client:
    """What the page does: the access token on every call, the session's CSRF token on writes."""

    def __init__(self, base: str, token: str | None = None):
        self.base, self.token, self.csrf = base, token, None

    def call(self, method: str, path: str, body=None, headers=None, raw: bytes | None = None):
        if method == "POST" and self.csrf is None:
            self.csrf = self.call("GET", "/api/session")[1].get("csrf", "")
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        h = {"Content-Type": "application/json", **({"X-Label-Token": self.token} if self.token else {}),
             **({"X-CSRF-Token": self.csrf} if method == "POST" else {}), **(headers or {})}
        req = urllib.request.Request(self.base + path, method=method, data=data, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def next(self, who: str):
        return self.call("POST", "/api/next", {"annotator": who})[1]

    def judge(self, who: str, item: str, ranking):
        return self.call("POST", "/api/judge", {"annotator": who, "item": item, "ranking": ranking})


def start(store: LabelStore, token: str | None = None) -> tuple[LabelServer, Client]:
    server = LabelServer(store, "127.0.0.1", 0, token=token)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, Client(f"http://127.0.0.1:{server.server_address[1]}", token)


@pytest.fixture
def samples(tmp_path) -> Path:
    return write_jsonl(tmp_path / "samples.jsonl", SAMPLES)


@pytest.fixture
def served(tmp_path, samples):
    store = LabelStore(tmp_path / "labels.jsonl", load_items(samples))
    server, client = start(store)
    yield store, client
    server.shutdown()
    server.server_close()


def lines(path: Path) -> list[dict]:
    return read_jsonl(path) if path.exists() else []


def test_the_human_annotator_entry_points_at_the_labelling_page():
    from rlhfkit.feedback.registry import build_annotator

    with pytest.raises(ValueError, match="rlhfkit label --samples"):
        build_annotator("human")


def test_items_get_stable_ids_and_empty_responses_are_left_out(samples):
    items = load_items(samples)
    assert len(items) == 3  # the item with an empty response has only one left
    assert [it.id for it in items] == [it.id for it in load_items(samples)]
    assert len({it.id for it in items}) == 3


def test_judge_writes_a_comparison_at_once_and_shows_the_next_item(served):
    store, c = served
    view = c.next("alice")
    assert view["k"] == 3 and view["prompt"] == "this movie"
    assert sorted(r["index"] for r in view["responses"]) == [0, 1, 2]
    assert c.next("alice")["item"] == view["item"]  # a reload shows the same item
    status, res = c.judge("alice", view["item"], [2, 0, 1])
    assert status == 200 and res["progress"]["done"] == 1 and res["progress"]["mine"] == 1
    (rec,) = lines(store.out)  # on disk before the answer came back
    assert rec["ranking"] == [2, 0, 1] and rec["annotator"] == "alice" and rec["item"] == view["item"]
    (comparison,) = read_records(str(store.out), "comparison")
    assert comparison.responses[comparison.ranking[0]] == " was fine ."
    assert c.next("alice")["item"] != view["item"]


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"annotator": "alice", "item": "nope", "ranking": [0, 1]}, 404, "unknown item"),
        ({"annotator": "alice", "item": None, "ranking": [0, 1, 2]}, 404, "unknown item"),
        ({"annotator": "alice", "item": "ITEM", "ranking": [0, 0, 1]}, 400, "exactly once"),
        ({"annotator": "alice", "item": "ITEM", "ranking": [0, 1]}, 400, "exactly once"),
        ({"annotator": "alice", "item": "ITEM", "ranking": "0,1,2"}, 400, "list of response indices"),
        ({"annotator": "alice", "item": "ITEM", "ranking": [0, 1, 2.0]}, 400, "integers"),
        ({"annotator": "alice", "item": "ITEM", "ranking": [True, 0, 2]}, 400, "integers"),
        ({"annotator": "a b", "item": "ITEM", "ranking": [0, 1, 2]}, 400, "annotator id"),
        ({"item": "ITEM", "ranking": [0, 1, 2]}, 400, "annotator id"),
    ],
)
def test_invalid_judgements_get_4xx_and_write_nothing(served, body, status, words):
    store, c = served
    item = c.next("alice")["item"]
    body = {**body, "item": item if body.get("item") == "ITEM" else body.get("item")}
    got, res = c.call("POST", "/api/judge", body)
    assert got == status and words in res["error"]
    assert not store.out.exists() or store.out.read_text() == ""


def test_malformed_requests(served):
    store, c = served
    item = c.next("alice")["item"]
    assert c.call("POST", "/api/judge", raw=b"{not json")[0] == 400
    assert c.call("POST", "/api/judge", raw=b"[1, 2]")[0] == 400
    assert c.call("POST", "/api/judge", {"annotator": "alice"}, headers={"Content-Type": "text/plain"})[0] == 415
    assert c.call("GET", "/api/judge")[0] == 405
    assert c.call("GET", "/api/next?annotator=alice")[0] == 405  # leasing is a write
    assert c.call("GET", "/api/nothing")[0] == 404
    assert c.call("GET", "/static/../label_server.py")[0] == 404
    assert c.call("POST", "/api/undo", {"annotator": "alice"})[0] == 409  # nothing to undo yet
    assert c.call("POST", "/api/skip", {"annotator": "alice", "item": "nope"})[0] == 404
    assert c.judge("alice", item, [0, 1, 2])[0] == 200
    status, res = c.judge("alice", item, [1, 0, 2])
    assert status == 409 and "already judged" in res["error"]
    assert len(lines(store.out)) == 1


def test_skip_undo_and_restart_resume(tmp_path, samples):
    out = tmp_path / "labels.jsonl"
    store = LabelStore(out, load_items(samples))
    server, c = start(store)
    first = c.next("alice")["item"]
    c.judge("alice", first, [0, 1, 2])
    second = c.next("alice")
    assert second["k"] == 2
    c.call("POST", "/api/skip", {"annotator": "alice", "item": second["item"]})
    third = c.next("alice")
    assert third["item"] not in (first, second["item"])
    c.judge("alice", third["item"], [3, 2, 1, 0])
    status, res = c.call("POST", "/api/undo", {"annotator": "alice"})
    assert status == 200 and res["undone"]["item"] == third["item"] and res["item"] == third["item"]
    assert [r["item"] for r in lines(out)] == [first]
    assert c.next("alice")["item"] == third["item"]  # the undone item is current again
    server.shutdown()
    server.server_close()
    # A crash mid-write leaves a torn line; a restart drops it and resumes after `first`.
    with open(out, "ab") as f:
        f.write(b'{"prompt": "the pl')
    server, c = start(LabelStore(out, load_items(samples)))
    view = c.next("alice")
    assert view["item"] != first and view["progress"]["done"] == 1
    assert [r["item"] for r in lines(out)] == [first]
    server.shutdown()
    server.server_close()


def test_overlap_gives_items_to_several_annotators_and_agreement_reads_them(tmp_path, samples):
    store = LabelStore(tmp_path / "labels.jsonl", load_items(samples), overlap=1.0, overlap_annotators=2)
    server, c = start(store)
    try:
        for who, flip in (("alice", False), ("bob", True)):
            for _ in range(3):
                v = c.next(who)
                ranking = [r["index"] for r in v["responses"]]  # the shown order, best first
                ranking = sorted(ranking)[::-1] if flip else sorted(ranking)
                assert c.judge(who, v["item"], ranking)[0] == 200
            assert c.next(who)["done"] is True
        assert c.next("carol")["done"] is True  # every item has its two annotators
    finally:
        server.shutdown()
        server.server_close()
    report = agreement_report(read_labels(store.out))
    # bob reverses alice on every item: 3 + 1 + 6 response pairs, all disagreeing.
    assert report["items_with_overlap"] == 3 and report["pair_decisions_compared"] == 10
    assert report["agreement"] == 0.0 and report["kendall_tau"] == -1.0


def test_without_overlap_two_annotators_get_different_items(served):
    _, c = served
    a, b = c.next("alice")["item"], c.next("bob")["item"]
    assert a != b  # the item shown to alice is leased to her


def test_token_and_host_checks(tmp_path, samples):
    token = "s3cret-s3cret-s3cret"
    server, c = start(LabelStore(tmp_path / "l.jsonl", load_items(samples)), token=token)
    try:
        anonymous = Client(c.base)
        status, res = anonymous.call("GET", "/api/progress?annotator=alice")
        assert status == 401 and "token" in res["error"]
        assert anonymous.call("POST", "/api/next", {"annotator": "alice"})[0] == 401
        assert anonymous.call("GET", f"/api/progress?annotator=alice&token={token}")[0] == 200
        assert c.call("POST", "/api/next", {"annotator": "alice"})[0] == 200
        assert c.call("GET", "/api/progress?annotator=alice", headers={"Host": "evil.example:80"})[0] == 403
        with urllib.request.urlopen(c.base + "/", timeout=10) as r:  # the page itself holds no data
            assert b"rlhfkit" in r.read()
    finally:
        server.shutdown()
        server.server_close()
    other = LabelServer(LabelStore(tmp_path / "m.jsonl", load_items(samples)), "0.0.0.0", 0)
    assert other.token and "token=" in other.url  # beyond localhost a token is always required
    other.server_close()


WORKER = """
import sys
from rlhfkit.feedback.label_store import LabelStore, load_items
samples, out, who = sys.argv[1:]
store = LabelStore(out, load_items(samples), overlap=1.0, overlap_annotators=2)
n = 0
while True:
    view = store.next_item(who)
    if view.get("item") is None:
        break
    ranking = [r["index"] for r in view["responses"]]
    store.judge(who, view["item"], ranking)
    n += 1
    if n % 7 == 0:  # undo rewrites the file while the other process appends
        store.undo(who)
        store.judge(who, view["item"], ranking[::-1])
print(n)
"""


def test_two_processes_on_one_file_never_interleave(tmp_path):
    rows = [{"prompt": f"prompt {i}", "responses": [f" a {i}", f" b {i}", f" c {i}"]} for i in range(24)]
    samples = write_jsonl(tmp_path / "many.jsonl", rows)
    out = tmp_path / "labels.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(samples), str(out), who], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for who in ("p1", "p2")]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    records = read_records(str(out), "comparison")  # every line valid
    assert len(records) == 48
    per = {}
    for r in lines(out):
        per.setdefault(r["annotator"], set()).add(r["item"])
    assert {k: len(v) for k, v in per.items()} == {"p1": 24, "p2": 24}


def test_labels_train_a_reward_model(tmp_path, served):
    """The file is a comparison dataset as it stands: one reward step on a tiny model reads it."""
    from rlhfkit.config import load_config
    from rlhfkit.recipes import reward

    store, c = served
    for _ in range(3):
        v = c.next("alice")
        c.judge("alice", v["item"], sorted(r["index"] for r in v["responses"]))
    model = build_tiny_model(tmp_path / "model")
    cfg = load_config(reward.RewardConfig, None, [
        f"model.name_or_path={model}", f"data.train={store.out}", "data.eval=null", "train.batch_size=2",
        "train.micro_batch_size=2", "train.max_steps=1", "log.progress=false", "log.save_every=0",
        "normalize.source=none", "data.gold=none"])
    final = reward.run(cfg, tmp_path / "rm")
    assert (final / "config.json").exists()
