"""The labelling server's thumbs mode over HTTP (no browser): items per response, feedback
records on disk at once, validation, skip/undo/resume, overlap + agreement, one mode per file."""

from __future__ import annotations

import pytest
from conftest import write_jsonl
from test_label_server import Client, lines, start

from rlhfkit.cli import main
from rlhfkit.data import DataError, read_records
from rlhfkit.feedback.agreement import agreement_report, read_labels
from rlhfkit.feedback.label_store import LabelStore, load_items

SAMPLES = [
    {"prompt": "this movie", "responses": [" was great .", " was bad .", "  "]},  # the blank one is left out
    {"prompt": "the plot", "completion": " was dull ."},
    {"messages": [{"role": "user", "content": "rate the cast"}], "responses": [" they were fine ."]},
    {"prompt": "this movie", "chosen": " was great .", "rejected": " was long ."},  # a repeat gets a -2 id
]


@pytest.fixture
def samples(tmp_path):
    return write_jsonl(tmp_path / "samples.jsonl", SAMPLES)


@pytest.fixture
def served(tmp_path, samples):
    store = LabelStore(tmp_path / "feedback.jsonl", load_items(samples, "thumbs"), mode="thumbs")
    server, client = start(store)
    yield store, client
    server.shutdown()
    server.server_close()


def label(c: Client, who: str, item: str, up):
    return c.call("POST", "/api/judge", {"annotator": who, "item": item, "label": up})


def test_one_item_per_non_empty_response(samples, capsys):
    items = load_items(samples, "thumbs")
    assert [(it.prompt, it.responses) for it in items] == [
        ("this movie", (" was great .",)), ("this movie", (" was bad .",)), ("the plot", (" was dull .",)),
        ("rate the cast", (" they were fine .",)), ("this movie", (" was great .",)), ("this movie", (" was long .",))]
    assert items[4].id == items[0].id + "-2" and len({it.id for it in items}) == 6
    assert [it.id for it in load_items(samples, "thumbs")] == [it.id for it in items]  # stable
    assert "left out 1 empty response" in capsys.readouterr().out
    bad = write_jsonl(samples.parent / "bad.jsonl", [SAMPLES[0], {"prompt": "p", "responses": ["ok", 3]}])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: field 'responses\[1\]'"):
        load_items(bad, "thumbs")
    none = write_jsonl(samples.parent / "none.jsonl", [{"prompt": "p", "responses": [" "]}])
    with pytest.raises(DataError, match="no items"):
        load_items(none, "thumbs")


def test_a_label_is_a_feedback_record_on_disk_at_once(served):
    store, c = served
    assert c.call("GET", "/api/session")[1]["mode"] == "thumbs"
    view = c.next("alice")
    assert view["mode"] == "thumbs" and view["prompt"] == "this movie" and view["response"] == " was great ."
    assert "responses" not in view and view["progress"]["total"] == 6
    status, res = label(c, "alice", view["item"], True)
    assert status == 200 and res["progress"]["done"] == 1
    (rec,) = lines(store.out)
    assert rec == {**rec, "prompt": "this movie", "completion": " was great .", "label": True,
                   "annotator": "alice", "item": view["item"]} and "time" in rec
    nxt = c.next("alice")
    assert label(c, "alice", nxt["item"], False)[0] == 200
    assert [(r.completion, r.label) for r in read_records(str(store.out), "feedback")] == [
        (" was great .", True), (" was bad .", False)]


@pytest.mark.parametrize("body, words", [
    ({"label": 1}, "label must be true"),
    ({"label": "up"}, "label must be true"),
    ({}, "label must be true"),
    ({"ranking": [0]}, "label must be true"),  # a rank judgement in thumbs mode
])
def test_bad_labels_get_400_and_write_nothing(served, body, words):
    store, c = served
    item = c.next("alice")["item"]
    status, res = c.call("POST", "/api/judge", {"annotator": "alice", "item": item, **body})
    assert status == 400 and words in res["error"]
    assert lines(store.out) == []
    csrf_less = Client(c.base)
    csrf_less.csrf = "stale"
    assert csrf_less.call("POST", "/api/judge", {"annotator": "alice", "item": item, "label": True})[0] == 403


def test_conversational_samples_give_conversational_feedback(served):
    store, c = served
    for _ in range(4):
        view = c.next("alice")
        label(c, "alice", view["item"], view["prompt"] != "rate the cast")
    rec = [r for r in read_records(str(store.out), "feedback") if r.prompt == "rate the cast"][0]
    assert [m.role for m in rec.messages] == ["user", "assistant"] and rec.messages[-1].content == " they were fine ."
    assert rec.label is False


def test_skip_undo_and_restart_resume(tmp_path, samples):
    out = tmp_path / "feedback.jsonl"
    server, c = start(LabelStore(out, load_items(samples, "thumbs"), mode="thumbs"))
    first = c.next("alice")["item"]
    label(c, "alice", first, True)
    second = c.next("alice")["item"]
    c.call("POST", "/api/skip", {"annotator": "alice", "item": second})
    third = c.next("alice")
    assert third["item"] not in (first, second)
    label(c, "alice", third["item"], False)
    status, res = c.call("POST", "/api/undo", {"annotator": "alice"})
    assert status == 200 and res["undone"]["label"] is False and res["item"] == third["item"]
    assert res["mode"] == "thumbs" and res["response"] == third["response"]
    assert [r["item"] for r in lines(out)] == [first]
    server.shutdown()
    server.server_close()
    server, c = start(LabelStore(out, load_items(samples, "thumbs"), mode="thumbs"))
    view = c.next("alice")  # a new server forgets skips, not labels
    assert view["item"] == second and view["progress"]["done"] == 1
    server.shutdown()
    server.server_close()


def test_overlap_labels_feed_thumbs_agreement(tmp_path, samples):
    """Every item to alice and bob; bob disagrees on the two 'this movie' responses of line 1:
    6 items, 4 agreed -> agreement 4/6; alice up on 3 of 6 (items 1, 3, 5), bob up on 3 of 6
    (items 2, 3, 5): Pe = 1/2·1/2 + 1/2·1/2 = 1/2, Cohen's κ = (2/3 − 1/2)/(1/2) = 1/3."""
    store = LabelStore(tmp_path / "fb.jsonl", load_items(samples, "thumbs"), overlap=1.0, mode="thumbs")
    server, c = start(store)
    alice = {0: True, 1: False, 2: True, 3: False, 4: True, 5: False}
    bob = {**alice, 0: False, 1: True}
    ids = [it.id for it in store.items]
    try:
        for who, labels in (("alice", alice), ("bob", bob)):
            for _ in ids:
                v = c.next(who)
                assert label(c, who, v["item"], labels[ids.index(v["item"])])[0] == 200
            assert c.next(who)["done"] is True
    finally:
        server.shutdown()
        server.server_close()
    report = agreement_report(read_labels(store.out))
    assert report["kind"] == "thumbs" and report["items_with_overlap"] == 6
    assert report["agreement"] == pytest.approx(4 / 6) and report["kappa"] == pytest.approx(1 / 3)


def test_one_file_one_mode(tmp_path, samples, capsys, monkeypatch):
    rankings = write_jsonl(tmp_path / "labels.jsonl", [{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1]}])
    with pytest.raises(DataError, match="holds rankings, and --mode thumbs writes thumbs labels"):
        LabelStore(rankings, load_items(samples, "thumbs"), mode="thumbs")
    thumbs = write_jsonl(tmp_path / "fb.jsonl", [{"prompt": "p", "completion": "a", "label": True}])
    rank_samples = write_jsonl(tmp_path / "k.jsonl", [{"prompt": "p", "responses": ["a", "b"]}])
    with pytest.raises(DataError, match="holds thumbs labels, and --mode rank writes rankings"):
        LabelStore(thumbs, load_items(rank_samples))
    with pytest.raises(ValueError, match="mode must be one of"):
        LabelStore(tmp_path / "x.jsonl", load_items(rank_samples), mode="stars")
    # the CLI says it in one line, before any server starts
    monkeypatch.setattr("rlhfkit.feedback.label_server.LabelServer.serve_forever",
                        lambda *a, **k: pytest.fail("the server should not start"))
    assert main(["label", "--mode", "thumbs", "--samples", str(samples), "--out", str(rankings), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "labels.jsonl: holds rankings" in err
