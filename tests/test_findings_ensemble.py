"""Finding 1's direction on the lab (docs/FINDINGS.md §1, benchmarks/ensemble_overopt.py): when each
member of an ensemble errs on different responses, optimising one member (or the members' mean)
picks its errors, while min and uwo aggregation do not.

Built so the direction holds by construction, not by chance. The lab base model's N = 16 samples
on each of 4 held-out prompts, scored by the gold judge; member i (i = 0..3) = gold + B on the
prompt's (i+1)-th worst sample by gold, B = 40 (B/4 = 10 is more than the whole gold
range, [GOLD_MIN, GOLD_MAX] = [-4.5, 1], so a boosted sample is on top of any sum that holds
at least a quarter of its boost). Best-of-N (one group of all N samples) then picks:
  single (member 0)  the worst sample: gold = the prompt's minimum, below best-of-1 (the mean);
  mean               gold + B/4 on each of the 4 worst: one of them, gold <= the 4th worst;
  min                gold itself (a sample is boosted in at most one member, the other three add
                     0), so the best sample by gold;
  uwo (λ = 1)        gold on unboosted samples (variance 0), gold + B/4 − B²·(1/4)(3/4) = gold − 290
                     on boosted ones: the best unboosted sample, the best by gold as N > 4.
These are the benchmark's own functions (goldlab.aggregate: models.ensemble.aggregate_members, and
goldlab.bon_curve: jobs.best_of_n.best_in_groups). The only thing that could break the direction
is a prompt whose N golds all tie; the test checks that first.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

BOOST = 40.0
N = 16


@pytest.fixture(scope="module")
def lab_samples(tmp_path_factory) -> tuple[torch.Tensor, torch.Tensor]:
    """gold (P, N) of the lab model's samples and the boost ranks (0 = worst by gold)."""
    import goldlab as g

    from rlhfkit.lab import ensure_lab

    ensure_lab()
    rows = g.samples(tmp_path_factory.mktemp("bon") / "samples.jsonl", "lab", 4, N)
    gold = torch.tensor([r["gold"] for r in rows])  # (P, N)
    assert bool((gold.max(1).values > gold.min(1).values).all()), "a prompt whose samples all tie on gold"
    return gold, gold.argsort(dim=1, stable=True).argsort(dim=1)


def test_min_and_uwo_keep_the_gold_that_one_member_and_the_mean_give_away(lab_samples):
    import goldlab as g

    gold, rank = lab_samples
    members = torch.stack([gold + BOOST * (rank == i) for i in range(4)])  # (M=4, P, N)
    at_n = {agg: g.bon_curve(g.aggregate(members, agg), gold, [1, N])[-1]["gold"] for agg in ("single", "mean", "min", "uwo")}
    best1 = gold.mean().item()
    worst, best, fourth = gold.min(1).values.mean().item(), gold.max(1).values.mean().item(), gold.sort(1).values[:, 3].mean().item()
    # Sums of 4 float32 values of size ~1: rounding ~1e-6, so 1e-5 separates "equal" from a real gap.
    assert at_n["single"] == pytest.approx(worst, abs=1e-5) and worst < best1
    assert at_n["mean"] <= fourth + 1e-5
    assert at_n["min"] == pytest.approx(best, abs=1e-5) and at_n["uwo"] == pytest.approx(best, abs=1e-5)
    assert at_n["min"] > best1 > at_n["single"]
    # min's curve never falls as n doubles: groups of 2n are unions of two groups of n (every sample
    # used once, contiguous groups), and the max of a union is at least the mean of the two maxima.
    curve = [p["gold"] for p in g.bon_curve(g.aggregate(members, "min"), gold, [1, 2, 4, 8, N])]
    assert all(b >= a - 1e-5 for a, b in zip(curve, curve[1:], strict=False)), curve
