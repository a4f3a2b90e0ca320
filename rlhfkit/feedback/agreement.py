"""Inter-annotator agreement on comparison records (`rlhfkit agreement FILE`).

A judgement of K responses implies a preference on each of its C(K, 2) response pairs. Two
judgements of the same item agree on a pair when they order it the same way. Over all items
judged by two or more annotators, and every pair of annotators on such an item:

    agreement  Po = agreeing pair decisions / pair decisions
    kappa      κ = (Po − Pe) / (1 − Pe),  Pe = q² + (1 − q)²

where a pair decision is "the response whose text sorts first wins" (a fixed orientation, so
annotators who saw the responses in different orders still compare), and q is the share of
decisions that say yes, pooled over all annotators (Scott's π / Fleiss' κ for two categories).
κ = 0 is chance level, 1 is perfect agreement. Kendall's τ = (concordant − discordant) / C(K, 2)
per pair of rankings, averaged, describes agreement on whole rankings.

Items are matched by the record's `item` field when present (the labelling server writes one),
else by (prompt, set of responses); responses are matched by text, so the same item with its
responses listed in another order is still the same item. `compare_to_reference` scores each
annotator of a file against reference labels (e.g. the lab's gold labels) the same way.

Thumbs labels (feedback records: one response, `label` true or false) are compared item by
item, an item being one (prompt, completion) judged by several people (`item` when present):

    agreement  P̄ = mean over items of Σ_j n_ij (n_ij − 1) / (n_i (n_i − 1))
    Fleiss' κ  (P̄ − Pe) / (1 − Pe),  Pe = Σ_j p_j²,  p_j = Σ_i n_ij / Σ_i n_i
    Cohen's κ  (Po − Pe) / (1 − Pe),  Pe = p_a p_b + (1 − p_a)(1 − p_b)   (two annotators)

with n_ij the annotators of item i who chose label j and n_i = Σ_j n_ij. Fleiss (1971) has the
same n_i for every item; items with different numbers of annotators are averaged the same way
(each item weighs the same; with n_i = 2 everywhere P̄ is the share of items agreed on). Cohen's
κ uses each annotator's own up-rate p_a on the items both judged; `kappa` is Cohen's when the
file has exactly two annotators on shared items, else Fleiss'. A κ whose chance agreement Pe
is 1 (every label the same) is undefined: None. `agreement_report` and `read_labels` tell the
two kinds of file apart by the first record: one with a `label` holds thumbs.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rlhfkit.data.records import DataError, Feedback

Pair = tuple[str, str]  # an unordered response pair, texts sorted


def pair_decisions(responses: Sequence[str], ranking: Sequence[int]) -> dict[Pair, bool]:
    """{(x, y) with x < y as text: True if x is ranked above y}; pairs of identical texts skipped."""
    position = {idx: pos for pos, idx in enumerate(ranking)}
    out: dict[Pair, bool] = {}
    for i, j in itertools.combinations(range(len(responses)), 2):
        x, y = responses[i], responses[j]
        if x == y:
            continue
        first_wins = position[i] < position[j]
        out[(x, y) if x < y else (y, x)] = first_wins if x < y else not first_wins
    return out


def kendall_tau(a: Mapping[Pair, bool], b: Mapping[Pair, bool]) -> float | None:
    """(concordant − discordant) / shared pairs, from two judgements' pair decisions."""
    shared = a.keys() & b.keys()
    if not shared:
        return None
    concordant = sum(a[k] == b[k] for k in shared)
    return (2 * concordant - len(shared)) / len(shared)


def chance_corrected(observed: float, chance: float) -> float | None:
    """(observed − chance) / (1 − chance); None when chance agreement is certain (undefined)."""
    return None if chance >= 1.0 else (observed - chance) / (1.0 - chance)


def kappa(agree: int, total: int, yes_rate: float) -> float | None:
    """κ = (Po − Pe) / (1 − Pe) with Pe = q² + (1 − q)² for the pooled yes rate q (None when
    there is nothing to compare, or when q is 0 or 1: then Pe = 1 and κ is 0/0)."""
    if total == 0:
        return None
    return chance_corrected(agree / total, yes_rate**2 + (1 - yes_rate) ** 2)


def _item_key(rec: Mapping[str, Any]) -> str:
    if rec.get("item") is not None:
        return str(rec["item"])
    return json.dumps([rec["prompt"], sorted(rec["responses"])])


def _normalise(rec: Mapping[str, Any]) -> Mapping[str, Any]:
    """Pairwise {chosen, rejected} records as responses + ranking."""
    if "responses" in rec:
        return rec
    return {**rec, "responses": [rec["chosen"], rec["rejected"]], "ranking": [0, 1]}


def is_thumbs(records: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a labels file holds thumbs (feedback records), judged by its first record."""
    return bool(records) and "label" in records[0]


def agreement_report(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Agreement of a labels file, thumbs or rankings (`kind` in the report says which)."""
    records = list(records)
    return thumbs_report(records) if is_thumbs(records) else ranking_report(records)


def ranking_report(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Agreement over items judged by >= 2 distinct annotators (the last judgement of each counts)."""
    by_item: dict[str, dict[str, dict[Pair, bool]]] = defaultdict(dict)
    n_records = 0
    for rec in map(_normalise, records):
        n_records += 1
        by_item[_item_key(rec)][str(rec.get("annotator") or "unknown")] = pair_decisions(rec["responses"], rec["ranking"])
    annotators = sorted({a for judges in by_item.values() for a in judges})
    agree = total = yes = decisions = 0
    taus: list[float] = []
    per_pair: dict[str, dict[str, float]] = {}
    overlapping = 0
    for judges in by_item.values():
        if len(judges) < 2:
            continue
        overlapping += 1
        for d in judges.values():
            yes += sum(d.values())
            decisions += len(d)
        for (ja, a), (jb, b) in itertools.combinations(sorted(judges.items()), 2):
            shared = a.keys() & b.keys()
            same = sum(a[k] == b[k] for k in shared)
            agree += same
            total += len(shared)
            tau = kendall_tau(a, b)
            if tau is not None:
                taus.append(tau)
            row = per_pair.setdefault(f"{ja} vs {jb}", {"items": 0, "pairs": 0, "agree": 0})
            row["items"] += 1
            row["pairs"] += len(shared)
            row["agree"] += same
    for row in per_pair.values():
        row["agreement"] = row["agree"] / row["pairs"] if row["pairs"] else None
    return {
        "kind": "ranking",
        "records": n_records,
        "items": len(by_item),
        "annotators": annotators,
        "items_with_overlap": overlapping,
        "pair_decisions_compared": total,
        "agreement": agree / total if total else None,
        "kappa": kappa(agree, total, yes / decisions if decisions else 0.5),
        "kendall_tau": sum(taus) / len(taus) if taus else None,
        "by_annotator_pair": per_pair,
    }


def compare_to_reference(records: Iterable[Mapping[str, Any]], reference: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Agreement of each annotator in `records` with `reference` labels on the same items
    (both files thumbs, or both rankings)."""
    records, reference = list(records), list(reference)
    if is_thumbs(records) != is_thumbs(reference):
        kinds = ("thumbs labels", "rankings") if is_thumbs(records) else ("rankings", "thumbs labels")
        raise DataError(f"the labels file holds {kinds[0]} but the reference holds {kinds[1]}; compare like with like")
    if is_thumbs(records):
        return thumbs_vs_reference(records, reference)
    ref = {_item_key(r): pair_decisions(r["responses"], r["ranking"]) for r in map(_normalise, reference)}
    ref_by_content = {json.dumps([r["prompt"], sorted(r["responses"])]): ref[_item_key(r)] for r in map(_normalise, reference)}
    stats: dict[str, dict[str, float]] = {}
    for rec in map(_normalise, records):
        gold = ref.get(_item_key(rec)) or ref_by_content.get(json.dumps([rec["prompt"], sorted(rec["responses"])]))
        if gold is None:
            continue
        mine = pair_decisions(rec["responses"], rec["ranking"])
        shared = mine.keys() & gold.keys()
        row = stats.setdefault(str(rec.get("annotator") or "unknown"), {"items": 0, "pairs": 0, "agree": 0})
        row["items"] += 1
        row["pairs"] += len(shared)
        row["agree"] += sum(mine[k] == gold[k] for k in shared)
    for row in stats.values():
        row["agreement"] = row["agree"] / row["pairs"] if row["pairs"] else None
    return stats


# ---------------------------------------------------------------------- thumbs


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Fleiss' κ from per-item category counts (a row per item: how many raters chose each
    category). Rows with fewer than two ratings carry no agreement and are left out."""
    rows = [list(r) for r in counts if sum(r) >= 2]
    if not rows:
        return {"items": 0, "agreement": None, "chance": None, "kappa": None}
    p_items = [sum(c * (c - 1) for c in r) / (sum(r) * (sum(r) - 1)) for r in rows]
    ratings = sum(map(sum, rows))
    shares = [sum(r[j] for r in rows) / ratings for j in range(len(rows[0]))]
    observed, chance = sum(p_items) / len(rows), sum(p * p for p in shares)
    return {"items": len(rows), "agreement": observed, "chance": chance, "kappa": chance_corrected(observed, chance)}


def cohen_kappa(pairs: Sequence[tuple[bool, bool]]) -> dict[str, Any]:
    """Cohen's κ of two annotators from their (label of a, label of b) on the items both judged."""
    n = len(pairs)
    if not n:
        return {"items": 0, "agree": 0, "agreement": None, "chance": None, "kappa": None}
    agree = sum(a == b for a, b in pairs)
    up_a, up_b = sum(a for a, _ in pairs) / n, sum(b for _, b in pairs) / n
    chance = up_a * up_b + (1 - up_a) * (1 - up_b)
    return {"items": n, "agree": agree, "agreement": agree / n, "chance": chance,
            "kappa": chance_corrected(agree / n, chance)}


def _thumbs_content(rec: Mapping[str, Any]) -> str:
    return json.dumps([rec["prompt"], rec["completion"]])


def _thumbs_key(rec: Mapping[str, Any]) -> str:
    return str(rec["item"]) if rec.get("item") is not None else _thumbs_content(rec)


def _thumbs_by_item(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, bool]]:
    """{item: {annotator: label}}; an annotator's last label of an item counts."""
    by_item: dict[str, dict[str, bool]] = defaultdict(dict)
    for rec in records:
        by_item[_thumbs_key(rec)][str(rec.get("annotator") or "unknown")] = bool(rec["label"])
    return by_item


def thumbs_report(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Agreement of thumbs labels over items labelled by >= 2 distinct annotators."""
    by_item = _thumbs_by_item(records)
    overlap = [judges for judges in by_item.values() if len(judges) >= 2]
    fleiss = fleiss_kappa([[sum(j.values()), len(j) - sum(j.values())] for j in overlap])
    pairs: dict[tuple[str, str], list[tuple[bool, bool]]] = {}
    for judges in overlap:
        for (ja, a), (jb, b) in itertools.combinations(sorted(judges.items()), 2):
            pairs.setdefault((ja, jb), []).append((a, b))
    by_pair = {f"{ja} vs {jb}": cohen_kappa(p) for (ja, jb), p in sorted(pairs.items())}
    cohen = next(iter(by_pair.values())) if len(by_pair) == 1 else None  # exactly two annotators share items
    per_annotator: dict[str, list[bool]] = defaultdict(list)
    for judges in by_item.values():
        for name, label in judges.items():
            per_annotator[name].append(label)
    labels = [label for mine in per_annotator.values() for label in mine]
    return {
        "kind": "thumbs",
        "records": len(records),
        "items": len(by_item),
        "annotators": sorted(per_annotator),
        "items_with_overlap": len(overlap),
        "labels_compared": sum(map(len, overlap)),
        "agreement": fleiss["agreement"],
        "kappa": cohen["kappa"] if cohen else fleiss["kappa"],
        "kappa_kind": "cohen" if cohen else "fleiss",
        "cohen_kappa": cohen["kappa"] if cohen else None,
        "fleiss_kappa": fleiss["kappa"],
        "up_rate": sum(labels) / len(labels) if labels else None,
        "by_annotator": {name: {"labels": len(mine), "up_rate": sum(mine) / len(mine)}
                         for name, mine in sorted(per_annotator.items())},
        "by_annotator_pair": by_pair,
    }


def thumbs_vs_reference(records: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Each annotator's agreement and Cohen's κ with reference thumbs, matched by item id, else
    by (prompt, completion)."""
    by_id = {str(r["item"]): bool(r["label"]) for r in reference if r.get("item") is not None}
    by_content = {_thumbs_content(r): bool(r["label"]) for r in reference}
    latest: dict[tuple[str, str], tuple[bool, bool]] = {}  # (annotator, item) -> (label, reference)
    for rec in records:
        gold = by_id.get(str(rec["item"])) if rec.get("item") is not None else None
        gold = by_content.get(_thumbs_content(rec)) if gold is None else gold
        if gold is not None:
            latest[(str(rec.get("annotator") or "unknown"), _thumbs_key(rec))] = (bool(rec["label"]), gold)
    pairs: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for (name, _), pair in latest.items():
        pairs[name].append(pair)
    return {name: cohen_kappa(p) for name, p in sorted(pairs.items())}


# ---------------------------------------------------------------------- files and text


def read_labels(path: str | Path) -> list[dict[str, Any]]:
    """Validated records of a labels JSONL file with their extra fields (item, annotator, time):
    comparisons, or feedback records (thumbs) when the first record has a `label`. Thumbs
    records come back with their `prompt` and `completion` as text (TRL message lists too)."""
    from rlhfkit.data import read_jsonl, read_records
    from rlhfkit.data.jsonl import iter_jsonl

    rows = read_jsonl(path)  # split on "\n" only: U+2028 and friends stay inside their record
    if not is_thumbs(rows):
        read_records(str(path), "comparison")  # validate every line first: file:line errors
        return rows
    out = []
    for n, obj in iter_jsonl(path):  # each line checked; a file of one label is fine here
        if not isinstance(obj, Mapping):
            raise DataError(f"expected a JSON object, got {type(obj).__name__}", source=str(path), line=n)
        try:
            out.append({**obj, **Feedback.from_json(obj).to_json()})
        except DataError as e:
            raise e.at(str(path), line=n) from None
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def format_report(report: Mapping[str, Any]) -> str:
    """A short human-readable summary (with the reference comparison when there is one)."""
    thumbs = report.get("kind") == "thumbs"
    lines = [
        f"{report['records']} {'labels' if thumbs else 'judgements'} of {report['items']} items by "
        f"{len(report['annotators'])} annotators ({', '.join(report['annotators'])})",
    ]
    if thumbs:
        kappa_name = "Cohen's" if report["kappa_kind"] == "cohen" else "Fleiss'"
        lines += [
            f"items labelled by 2+ annotators: {report['items_with_overlap']} ({report['labels_compared']} labels)",
            f"agreement: {_pct(report['agreement'])}   {kappa_name} kappa: {_num(report['kappa'])}"
            f"   thumbs up: {_pct(report['up_rate'])} of labels",
        ]
        for name, row in report["by_annotator_pair"].items():
            lines.append(f"  {name}: {_pct(row['agreement'])} on {row['items']} items, Cohen's kappa {_num(row['kappa'])}")
    else:
        lines += [
            f"items judged by 2+ annotators: {report['items_with_overlap']}",
            f"pairwise agreement: {_pct(report['agreement'])} over {report['pair_decisions_compared']} pair decisions",
            f"kappa: {_num(report['kappa'])}   mean Kendall tau: {_num(report['kendall_tau'])}",
        ]
        for name, row in report["by_annotator_pair"].items():
            lines.append(f"  {name}: {_pct(row['agreement'])} on {row['pairs']} pairs ({row['items']} items)")
    for name, row in report.get("reference", {}).get("by_annotator", {}).items():
        if thumbs:
            lines.append(f"  {name} vs reference: {_pct(row['agreement'])} on {row['items']} items, "
                         f"Cohen's kappa {_num(row['kappa'])}")
        else:
            lines.append(f"  {name} vs reference: {_pct(row['agreement'])} on {row['pairs']} pairs ({row['items']} items)")
    return "\n".join(lines)
