"""The labelling page in a real headless browser (Debian's chromium driven by Playwright).

Flows: log in, rank K = 3 by clicks + Enter, skip a pairwise item with S, rank K = 4 with keys,
Backspace and a drag in the ranking list, undo with U, reload (same item, progress kept), finish,
then a second annotator judges the skipped pairwise item with the arrow key. Thumbs mode: label by
keys and a click, undo, reload, finish. After each step the JSONL on disk is checked: a judgement
is there as soon as the page says so.

`make test` installs the browser first (`make browser`: apt chromium + pip playwright); where
neither can be had the test skips and says why. Playwright's own browser download is never used.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from conftest import write_jsonl

from rlhfkit.data import read_jsonl, read_records
from rlhfkit.feedback.label_server import LabelServer
from rlhfkit.feedback.label_store import LabelStore, load_items

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

SAMPLES = [
    {"prompt": "the first prompt", "responses": ["response zero", "response one", "response two"]},
    {"prompt": "the pairwise prompt", "responses": ["left or right zero", "left or right one"]},
    {"prompt": "the third prompt", "responses": ["four zero", "four one", "four two", "four three"]},
]


def chromium_path() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed: `make browser` (or pip install playwright) installs it")
    exe = os.environ.get("RLHFKIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(exe).exists():
        pytest.skip("no chromium browser found (/usr/bin/chromium): `make browser` installs Debian's chromium with apt")
    return exe


def lines(path: Path) -> list[dict]:
    return read_jsonl(path) if path.exists() else []


def shown_indices(page) -> list[int]:
    """Original response indices in the order the page shows them (cards 1..K)."""
    return [int(x) for x in page.eval_on_selector_all("#responses .response", "els => els.map(e => e.dataset.index)")]


def ranking_list(page) -> list[int]:
    return [int(x) for x in page.eval_on_selector_all("#ranking li", "els => els.map(e => e.dataset.index)")]


def wait_item(page, prompt: str) -> None:
    page.wait_for_function("p => document.getElementById('prompt').textContent === p && document.body.dataset.busy !== '1'", arg=prompt)
    page.wait_for_selector("#task:not([hidden])")


def test_rank_skip_undo_reload_in_a_real_browser(tmp_path):
    exe = chromium_path()
    from playwright.sync_api import sync_playwright

    out = tmp_path / "labels.jsonl"
    store = LabelStore(out, load_items(write_jsonl(tmp_path / "samples.jsonl", SAMPLES)))
    server = LabelServer(store, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    shots = Path(os.environ.get("RLHFKIT_SCREENSHOTS", tmp_path))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            page.goto(url)

            # log in; the first item (K = 3) appears with numbered cards
            page.fill("#annotator-input", "alice")
            page.click("#start")
            wait_item(page, "the first prompt")
            assert page.inner_text("#annotator-name") == "alice"
            assert "0 / 3" in page.inner_text("#progress")
            order = shown_indices(page)
            # click card 3 then card 1: the remaining one is implied, Enter submits
            page.click("#response-2")
            assert page.is_disabled("#submit")
            page.click("#response-0")
            assert ranking_list(page) == [order[2], order[0], order[1]]
            assert page.inner_text("#response-1 .rank") == "#3"
            page.screenshot(path=str(shots / "label-ranking.png"), full_page=True)
            page.keyboard.press("Enter")
            wait_item(page, "the pairwise prompt")
            assert [r["ranking"] for r in lines(out)] == [[order[2], order[0], order[1]]]
            assert lines(out)[0]["annotator"] == "alice"

            # pairwise mode: A/B cards, no ranking list; S skips
            assert page.inner_text("#response-0 .label") == "A"
            assert not page.is_visible("#ranking-panel")
            page.screenshot(path=str(shots / "label-pairwise.png"), full_page=True)
            page.keyboard.press("s")
            wait_item(page, "the third prompt")
            assert "skipped: 1" in page.inner_text("#progress")

            # K = 4 with keys: 3, 1, Backspace (drops 1), 4, 2 -> implied last; then drag the
            # third entry of the ranking list to the top and submit with the button
            order = shown_indices(page)
            for key in ("3", "1", "Backspace", "4", "2"):
                page.keyboard.press(key)
            assert ranking_list(page) == [order[2], order[3], order[1], order[0]]
            page.drag_and_drop("#ranking li:nth-child(3)", "#ranking li:nth-child(1)")
            final = [order[1], order[2], order[3], order[0]]
            assert ranking_list(page) == final
            page.click("#submit")
            page.wait_for_selector("#finished:not([hidden])")
            assert [r["ranking"] for r in lines(out)][-1] == final

            # U undoes the last judgement: the item is back and gone from the file
            page.keyboard.press("u")
            wait_item(page, "the third prompt")
            assert len(lines(out)) == 1 and "Undid" in page.inner_text("#status")

            # reload: same annotator (remembered), same item, progress from the file
            page.reload()
            wait_item(page, "the third prompt")
            assert "1 / 3" in page.inner_text("#progress")
            order = shown_indices(page)
            for key in ("4", "3", "2"):
                page.keyboard.press(key)
            page.keyboard.press("Enter")
            page.wait_for_selector("#finished:not([hidden])")
            assert lines(out)[-1]["ranking"] == [order[3], order[2], order[1], order[0]]

            # a second annotator gets the pairwise item alice skipped; → picks B
            bob = browser.new_context().new_page()
            bob.goto(url + "?annotator=bob")
            wait_item(bob, "the pairwise prompt")
            order = shown_indices(bob)
            bob.keyboard.press("ArrowRight")
            bob.wait_for_selector("#finished:not([hidden])")
            assert lines(out)[-1] == {**lines(out)[-1], "annotator": "bob", "ranking": [order[1], order[0]]}
            assert "3 / 3" in bob.inner_text("#progress")
            bob.screenshot(path=str(shots / "label-finished.png"), full_page=True)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    records = read_records(str(out), "comparison")
    assert [r.annotator for r in records] == ["alice", "alice", "bob"]


THUMBS_SAMPLES = [
    {"prompt": "the thumbs prompt", "responses": ["thumb zero", "thumb one", "thumb two"]},
    {"prompt": "the last prompt", "responses": ["the last response"]},
]


def wait_thumbs(page, response: str) -> None:
    page.wait_for_function("r => document.getElementById('thumbs-response').textContent === r "
                           "&& document.body.dataset.busy !== '1'", arg=response)
    page.wait_for_selector("#task:not([hidden])")


def test_thumbs_mode_keys_undo_reload_in_a_real_browser(tmp_path):
    """Thumbs mode: ↑ and N label by keyboard, the 👎 button by click, U undoes the click, a reload
    shows the undone item again with progress from the file, Y finishes. The file holds feedback."""
    exe = chromium_path()
    from playwright.sync_api import sync_playwright

    out = tmp_path / "feedback.jsonl"
    store = LabelStore(out, load_items(write_jsonl(tmp_path / "samples.jsonl", THUMBS_SAMPLES), "thumbs"), mode="thumbs")
    server = LabelServer(store, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    shots = Path(os.environ.get("RLHFKIT_SCREENSHOTS", tmp_path))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 700})
            page.goto(url + "?annotator=carol")
            wait_thumbs(page, "thumb zero")
            assert page.inner_text("#prompt") == "the thumbs prompt" and "0 / 4" in page.inner_text("#progress")
            assert page.is_visible("#thumb-up") and page.is_visible("#thumb-down")
            assert not page.is_visible("#responses") and not page.is_visible("#submit")  # rank controls hidden
            assert "↑" in page.inner_text("#thumb-up") and "N" in page.inner_text("#thumb-down")  # the keys are shown
            page.screenshot(path=str(shots / "label-thumbs.png"), full_page=True)

            page.keyboard.press("ArrowUp")
            wait_thumbs(page, "thumb one")
            assert [(r["completion"], r["label"]) for r in lines(out)] == [("thumb zero", True)]
            page.keyboard.press("n")
            wait_thumbs(page, "thumb two")
            page.click("#thumb-down")
            wait_thumbs(page, "the last response")
            assert [r["label"] for r in lines(out)] == [True, False, False] and "Saved 👎" in page.inner_text("#status")

            page.keyboard.press("u")  # the click on "thumb two" is undone: it is back, and gone from the file
            wait_thumbs(page, "thumb two")
            assert len(lines(out)) == 2 and "Undid" in page.inner_text("#status")

            page.reload()
            wait_thumbs(page, "thumb two")
            assert "2 / 4" in page.inner_text("#progress")
            page.keyboard.press("y")
            wait_thumbs(page, "the last response")
            page.keyboard.press("ArrowDown")
            page.wait_for_selector("#finished:not([hidden])")
            assert "4 / 4" in page.inner_text("#progress")
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    records = read_records(str(out), "feedback")
    assert [(r.completion, r.label, r.annotator) for r in records] == [
        ("thumb zero", True, "carol"), ("thumb one", False, "carol"), ("thumb two", True, "carol"),
        ("the last response", False, "carol")]
