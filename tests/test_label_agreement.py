"""Inter-annotator agreement against hand-worked numbers, and `rlhfkit agreement` on a file."""

from __future__ import annotations

import json

import pytest
from conftest import write_jsonl

from rlhfkit.cli import main
from rlhfkit.feedback.agreement import (
    agreement_report,
    compare_to_reference,
    kappa,
    kendall_tau,
    pair_decisions,
)


def test_pair_decisions_by_hand_and_independent_of_listing_order():
    """Ranking [2, 0, 1] of (x, y, z) means z > x > y: x above y yes, x above z no, y above z no."""
    expected = {("x", "y"): True, ("x", "z"): False, ("y", "z"): False}
    assert pair_decisions(["x", "y", "z"], [2, 0, 1]) == expected
    assert pair_decisions(["z", "x", "y"], [0, 1, 2]) == expected  # same judgement, listed differently
    assert pair_decisions(["x", "x"], [0, 1]) == {}  # identical texts carry no preference


def test_kendall_tau_and_kappa_by_hand():
    """tau = (concordant − discordant) / pairs: same 1, reversed −1, one of three swapped 1/3.
    kappa with Po = 3/4: q = 1/2 gives Pe = 1/2, κ = 1/2; q = 3/4 gives Pe = 10/16, κ = 1/3."""
    a = pair_decisions(["x", "y", "z"], [0, 1, 2])
    assert kendall_tau(a, a) == 1.0
    assert kendall_tau(a, pair_decisions(["x", "y", "z"], [2, 1, 0])) == -1.0
    assert kendall_tau(a, pair_decisions(["x", "y", "z"], [0, 2, 1])) == pytest.approx(1 / 3)
    assert kappa(3, 4, 0.5) == pytest.approx(0.5)
    assert kappa(3, 4, 0.75) == pytest.approx(1 / 3)
    assert kappa(0, 0, 0.5) is None


RECORDS = [
    {"item": "i1", "annotator": "alice", "prompt": "p", "responses": ["r1", "r2", "r3"], "ranking": [0, 1, 2]},
    {"item": "i1", "annotator": "bob", "prompt": "p", "responses": ["r1", "r2", "r3"], "ranking": [0, 2, 1]},
    {"item": "i2", "annotator": "alice", "prompt": "q", "responses": ["s1", "s2"], "ranking": [0, 1]},
    {"item": "i2", "annotator": "bob", "prompt": "q", "chosen": "s1", "rejected": "s2"},
    {"item": "i2", "annotator": "carol", "prompt": "q", "responses": ["s1", "s2"], "ranking": [1, 0]},
    {"item": "i3", "annotator": "alice", "prompt": "u", "responses": ["t1", "t2"], "ranking": [1, 0]},
]


def test_agreement_report_by_hand():
    """i1: alice r1>r2>r3, bob r1>r3>r2 -> agree on 2 of 3 pairs (tau 1/3).
    i2: alice, bob s1>s2, carol s2>s1 -> (a,b) 1/1, (a,c) 0/1, (b,c) 0/1 (taus 1, −1, −1).
    i3 has one annotator: not counted. Po = (2 + 1 + 0 + 0) / (3 + 3) = 0.5.
    Yes decisions ("text-first response wins"): alice i1 3, bob i1 2, i2 alice 1, bob 1, carol 0
    -> q = 7/9, Pe = (49 + 4)/81 = 53/81, κ = (1/2 − 53/81)/(1 − 53/81) = −0.4464286.
    mean tau = (1/3 + 1 − 1 − 1)/4 = −1/6."""
    r = agreement_report(RECORDS)
    assert r["items"] == 3 and r["items_with_overlap"] == 2 and r["annotators"] == ["alice", "bob", "carol"]
    assert r["pair_decisions_compared"] == 6 and r["agreement"] == pytest.approx(0.5)
    assert r["kappa"] == pytest.approx(-0.4464286, abs=1e-6)
    assert r["kendall_tau"] == pytest.approx(-1 / 6)
    assert r["by_annotator_pair"]["alice vs bob"] == {"items": 2, "pairs": 4, "agree": 3, "agreement": 0.75}


def test_items_match_by_content_without_item_ids():
    recs = [{k: v for k, v in rec.items() if k != "item"} for rec in RECORDS]
    recs[1] = {**recs[1], "responses": ["r3", "r1", "r2"], "ranking": [1, 0, 2]}  # bob's listing order differs
    assert agreement_report(recs)["agreement"] == pytest.approx(0.5)


def test_compare_to_reference():
    gold = [{"prompt": "p", "responses": ["r1", "r2", "r3"], "ranking": [0, 1, 2]},
            {"prompt": "q", "responses": ["s2", "s1"], "ranking": [0, 1]}]
    stats = compare_to_reference([{k: v for k, v in r.items() if k != "item"} for r in RECORDS], gold)
    assert stats["alice"] == {"items": 2, "pairs": 4, "agree": 3, "agreement": 0.75}
    assert stats["carol"]["agreement"] == 1.0 and stats["bob"]["agreement"] == pytest.approx(2 / 4)


def test_agreement_cli(tmp_path, capsys):
    path = write_jsonl(tmp_path / "labels.jsonl", RECORDS)
    assert main(["agreement", str(path)]) == 0
    text = capsys.readouterr().out
    assert "pairwise agreement: 50.0% over 6 pair decisions" in text and "alice vs bob: 75.0%" in text
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"prompt": "p", "responses": ["r1", "r2", "r3"], "ranking": [0, 1, 2]},
                                                 {"prompt": "q", "responses": ["s2", "s1"], "ranking": [0, 1]}])
    plain = write_jsonl(tmp_path / "plain.jsonl", [{k: v for k, v in r.items() if k != "item"} for r in RECORDS])
    assert main(["agreement", str(plain), "--json", "--reference", str(gold)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["reference"]["by_annotator"]["alice"]["agreement"] == 0.75
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}])
    assert main(["agreement", str(bad)]) == 2
    assert "bad.jsonl:1: field 'ranking'" in capsys.readouterr().err
