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
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

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


def kappa(agree: int, total: int, yes_rate: float) -> float | None:
    """κ = (Po − Pe) / (1 − Pe) with Pe = q² + (1 − q)² for the pooled yes rate q."""
    if total == 0:
        return None
    po = agree / total
    pe = yes_rate**2 + (1 - yes_rate) ** 2
    return 1.0 if pe >= 1.0 else (po - pe) / (1 - pe)


def _item_key(rec: Mapping[str, Any]) -> str:
    if rec.get("item") is not None:
        return str(rec["item"])
    return json.dumps([rec["prompt"], sorted(rec["responses"])])


def _normalise(rec: Mapping[str, Any]) -> Mapping[str, Any]:
    """Pairwise {chosen, rejected} records as responses + ranking."""
    if "responses" in rec:
        return rec
    return {**rec, "responses": [rec["chosen"], rec["rejected"]], "ranking": [0, 1]}


def agreement_report(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
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
    """Agreement of each annotator in `records` with `reference` labels on the same items."""
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


def read_labels(path: str | Path) -> list[dict[str, Any]]:
    """Validated comparison records of a JSONL file, with their extra fields (item, annotator)."""
    from rlhfkit.data import read_jsonl, read_records

    read_records(str(path), "comparison")  # validate every line first: file:line errors
    return read_jsonl(path)  # split on "\n" only: U+2028 and friends stay inside their record


def format_report(report: Mapping[str, Any]) -> str:
    """A short human-readable summary."""
    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"

    lines = [
        f"{report['records']} judgements of {report['items']} items by {len(report['annotators'])} annotators "
        f"({', '.join(report['annotators'])})",
        f"items judged by 2+ annotators: {report['items_with_overlap']}",
        f"pairwise agreement: {pct(report['agreement'])} over {report['pair_decisions_compared']} pair decisions",
        "kappa: " + ("n/a" if report["kappa"] is None else f"{report['kappa']:.3f}")
        + "   mean Kendall tau: " + ("n/a" if report["kendall_tau"] is None else f"{report['kendall_tau']:.3f}"),
    ]
    for name, row in report["by_annotator_pair"].items():
        lines.append(f"  {name}: {pct(row['agreement'])} on {row['pairs']} pairs ({row['items']} items)")
    return "\n".join(lines)
