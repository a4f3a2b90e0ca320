"""Agreement of thumbs labels: Fleiss' and Cohen's κ against worked examples, and
`rlhfkit agreement` telling a thumbs file from a rankings file."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
from conftest import write_jsonl

from rlhfkit.cli import main
from rlhfkit.feedback.agreement import (
    agreement_report,
    cohen_kappa,
    fleiss_kappa,
    kappa,
    read_labels,
)

# Wikipedia, "Fleiss' kappa", worked example: 10 subjects, 14 raters, 5 categories.
WIKIPEDIA_FLEISS = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]


def test_fleiss_kappa_on_the_wikipedia_example():
    """P_i = (Σ_j n_ij² − 14) / (14·13); Σ_j n_ij² per row = 196, 60, 70, 94, 74, 98, 58, 46, 66, 66
    (sum 828), so P̄ = (828 − 140) / (182·10) = 172/455 = 0.378. Column totals 20, 28, 39, 21, 32
    of 140: Pe = (20² + 28² + 39² + 21² + 32²) / 140² = 417/1960 = 0.213. κ = (P̄ − Pe)/(1 − Pe)
    = 4211/20059 = 0.2099 (Wikipedia: 0.210). Exact fractions, so 1e-12 is float rounding only."""
    r = fleiss_kappa(WIKIPEDIA_FLEISS)
    assert r["items"] == 10
    assert r["agreement"] == pytest.approx(float(Fraction(172, 455)), abs=1e-12)
    assert r["chance"] == pytest.approx(float(Fraction(417, 1960)), abs=1e-12)
    assert r["kappa"] == pytest.approx(float(Fraction(4211, 20059)), abs=1e-12)
    assert round(r["kappa"], 3) == 0.210
    assert fleiss_kappa([[1, 0], [0, 1]])["kappa"] is None  # one rating per item: nothing to agree on
    assert fleiss_kappa([[2, 0], [3, 0]])["kappa"] is None  # everyone said the same: κ is 0/0
    assert kappa(4, 4, 1.0) is None  # the same for rankings whose pair decisions all say yes


def cohen_example() -> list[dict]:
    """Wikipedia, "Cohen's kappa": 50 proposals, A and B say yes/no: 20 yes-yes, 5 A-yes B-no,
    10 A-no B-yes, 15 no-no; as thumbs records (yes = thumbs up), one item per proposal."""
    cells = [(True, True)] * 20 + [(True, False)] * 5 + [(False, True)] * 10 + [(False, False)] * 15
    rows = []
    for i, (a, b) in enumerate(cells):
        for who, label in (("A", a), ("B", b)):
            rows.append({"prompt": f"proposal {i}", "completion": " fund it", "label": label, "annotator": who,
                         "item": f"p{i}"})
    return rows


def test_cohen_kappa_on_the_wikipedia_example_end_to_end(tmp_path, capsys):
    """Po = (20 + 15)/50 = 0.7; A says yes 25/50, B 30/50: Pe = 0.5·0.6 + 0.5·0.4 = 0.5, κ = 0.4.
    Fleiss' κ of the same labels pools the yes rate: p = 55/100, Pe = 0.55² + 0.45² = 0.505,
    κ = (0.7 − 0.505)/0.495 = 0.39394 (it is reported too, but with two annotators κ is Cohen's)."""
    assert cohen_kappa([(True, True)] * 20 + [(True, False)] * 5 + [(False, True)] * 10 + [(False, False)] * 15) == {
        "items": 50, "agree": 35, "agreement": 0.7, "chance": pytest.approx(0.5), "kappa": pytest.approx(0.4)}
    path = write_jsonl(tmp_path / "thumbs.jsonl", cohen_example())
    r = agreement_report(read_labels(path))
    assert r["kind"] == "thumbs" and r["kappa_kind"] == "cohen"
    assert r["items_with_overlap"] == 50 and r["labels_compared"] == 100
    assert r["agreement"] == pytest.approx(0.7) and r["kappa"] == pytest.approx(0.4)
    assert r["fleiss_kappa"] == pytest.approx(0.195 / 0.495, abs=1e-12)
    assert r["by_annotator"] == {"A": {"labels": 50, "up_rate": 0.5}, "B": {"labels": 50, "up_rate": 0.6}}
    assert main(["agreement", str(path)]) == 0
    text = capsys.readouterr().out
    assert "agreement: 70.0%   Cohen's kappa: 0.400" in text and "A vs B: 70.0% on 50 items" in text


def test_three_annotators_give_fleiss_kappa_by_hand():
    """i1 a,b,c up -> P = 1; i2 a,b up, c down -> (2·1 + 1·0)/(3·2) = 1/3; i3 all down -> 1;
    i4 a up, b down -> 0; i5 only a: not an overlap item. a's first label of i2 (down) is
    replaced by its second (up). P̄ = (1 + 1/3 + 1 + 0)/4 = 7/12; up ratings 3 + 2 + 0 + 1 = 6
    of 11: Pe = (36 + 25)/121 = 61/121; κ = (7/12 − 61/121)/(60/121) = 115/720 = 0.159722."""
    labels = {"i1": "aU bU cU", "i2": "aD bU cD aU", "i3": "aD bD cD", "i4": "aU bD", "i5": "aU"}
    rows = [{"prompt": "p", "completion": item, "label": tag[1] == "U", "annotator": tag[0], "item": item}
            for item, tags in labels.items() for tag in tags.split()]
    r = agreement_report(rows)
    assert r["kappa_kind"] == "fleiss" and r["cohen_kappa"] is None
    assert r["records"] == 13 and r["items"] == 5 and r["items_with_overlap"] == 4 and r["labels_compared"] == 11
    assert r["agreement"] == pytest.approx(7 / 12) and r["kappa"] == pytest.approx(115 / 720)
    # pairwise Cohen: a vs b on i1..i4 = (U,U), (U,U), (D,D), (U,D): Po = 3/4, p_a = 3/4, p_b = 1/2,
    # Pe = 3/8 + 1/8 = 1/2, κ = 1/2
    assert r["by_annotator_pair"]["a vs b"]["kappa"] == pytest.approx(0.5)
    assert r["by_annotator_pair"]["b vs c"]["items"] == 3


def test_items_match_by_content_without_ids_and_conversations_read_as_text(tmp_path):
    user = {"role": "user", "content": "rate it"}
    rows = [{"prompt": [user], "completion": [{"role": "assistant", "content": "fine ."}], "label": True, "annotator": "a"},
            {"prompt": "rate it", "completion": "fine .", "label": False, "annotator": "b"}]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    got = read_labels(path)
    assert [(g["prompt"], g["completion"]) for g in got] == [("rate it", "fine .")] * 2
    r = agreement_report(got)
    # one item, a up and b down: Po = 0; p_a = 1, p_b = 0, so Pe = 1·0 + 0·1 = 0 and κ = 0
    assert r["items"] == 1 and r["agreement"] == 0.0 and r["kappa"] == 0.0


def test_reference_and_kind_mismatch(tmp_path, capsys):
    rows = cohen_example()
    path = write_jsonl(tmp_path / "thumbs.jsonl", rows)
    # the reference is A's labels without item ids: A agrees 50/50, B 35/50 with it
    ref = write_jsonl(tmp_path / "ref.jsonl", [{k: v for k, v in r.items() if k not in ("item", "annotator")}
                                               for r in rows if r["annotator"] == "A"])
    assert main(["agreement", str(path), "--reference", str(ref), "--json"]) == 0
    by = json.loads(capsys.readouterr().out)["reference"]["by_annotator"]
    assert by["A"]["agreement"] == 1.0 and by["A"]["kappa"] == 1.0
    assert by["B"]["agreement"] == pytest.approx(0.7) and by["B"]["kappa"] == pytest.approx(0.4)
    comparisons = write_jsonl(tmp_path / "cmp.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    assert main(["agreement", str(path), "--reference", str(comparisons)]) == 2
    assert "holds thumbs labels but the reference holds rankings" in capsys.readouterr().err


def test_all_the_same_label_gives_no_kappa(tmp_path, capsys):
    """Everyone says up: Pe = 1, κ = 0/0 is undefined and shown as n/a; the file is still read
    (one label only is an error for training, not for agreement)."""
    rows = [{"prompt": "p", "completion": "c", "label": True, "annotator": who, "item": "i"} for who in "ab"]
    assert main(["agreement", str(write_jsonl(tmp_path / "ups.jsonl", rows))]) == 0
    assert "agreement: 100.0%   Cohen's kappa: n/a" in capsys.readouterr().out
