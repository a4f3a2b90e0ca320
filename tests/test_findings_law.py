"""Finding 2's direction on the lab (docs/FINDINGS.md §2, benchmarks/overopt_law.py): best-of-n's
KL measured from samples stays under the analytic log n − (n−1)/n, and a proxy with an error gives
a gold curve that rises, then falls, which d(α − βd) fits with a peak (β > 0).

On the lab base model's N = 16 samples on each of 4 held-out prompts, scored by the gold judge:
- KL: goldlab.bon_kl_plugin is the exact KL of best-of-n drawn from each prompt's empirical
  distribution. Beirami et al. 2024 (Theorem 1) prove log n − (n−1)/n an upper bound on that KL for
  any distribution, ties or not, so it holds for the RM-like proxy (distinct values) and for gold
  (which ties) alike; for n = 1 both are exactly 0 (best-of-1 is the policy).
- Fall: proxy = gold + B on each prompt's worst sample by gold, B = 10 > the whole gold range
  [-4.5, 1], so the proxy's top sample is that worst one. Best-of-N (one group of all N) picks it:
  gold gain = mean(min) − mean(gold) < 0. Best-of-2 picks, in 7 of its 8 groups, the better of
  two samples by gold: its gain is the mean pairwise spread, positive on these samples, less what
  the one boosted group loses. So the curve has an interior maximum and a negative end; with
  gains g(d) ≈ 0 at d = 0, the least-squares d(α − βd) then has β > 0 and a finite fitted peak.
  The gains are checked first (rise at n = 2, fall below 0 at n = N) so a failure says which
  premise broke.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

N = 16
NS = [1, 2, 4, 8, N]


@pytest.fixture(scope="module")
def gold(tmp_path_factory) -> torch.Tensor:
    import goldlab as g

    from rlhfkit.lab import ensure_lab

    ensure_lab()
    rows = g.samples(tmp_path_factory.mktemp("bon") / "samples.jsonl", "lab", 4, N)
    return torch.tensor([r["gold"] for r in rows])  # (P, N)


def test_best_of_n_kl_from_samples_is_under_the_analytic_bound(gold):
    import goldlab as g

    from rlhfkit.jobs.best_of_n import best_of_n_kl

    distinct = gold + 1e-3 * torch.arange(N)  # break gold's ties: N distinct values per prompt
    for n in NS:
        # float64 sums of at most 16 terms of size <= log 16: rounding ~1e-14, 1e-9 is a wide margin.
        for rewards in (gold, distinct):
            assert g.bon_kl_plugin(rewards, n) <= best_of_n_kl(n) + 1e-9, (n, rewards is gold)
    assert g.bon_kl_plugin(distinct, 1) == pytest.approx(0.0, abs=1e-12)
    # Measured at n = 2 with N distinct values, by hand: the k-th lowest is picked with probability
    # q_k = (k² − (k−1)²)/N² = (2k − 1)/N², so KL = Σ_k q_k log(N q_k).
    by_hand = sum((2 * k - 1) / N**2 * math.log((2 * k - 1) / N) for k in range(1, N + 1))
    assert g.bon_kl_plugin(distinct, 2) == pytest.approx(by_hand, abs=1e-9)


def test_an_erring_proxy_gives_a_rise_a_fall_and_a_fitted_peak(gold):
    import goldlab as g

    from rlhfkit.monitor.findings import fit_law

    worst = gold.argsort(dim=1, stable=True).argsort(dim=1) == 0  # (P, N) each prompt's worst sample
    curve = g.bon_curve(gold + 10.0 * worst, gold, NS)
    gains = [p["gold_gain"] for p in curve]
    assert gains[1] > 0 and gains[-1] < 0, gains
    fit = fit_law([p["d"] for p in curve], gains, "bon")
    assert fit.beta > 0 and fit.peak_kl is not None and 0 < fit.peak_kl < curve[-1]["kl"], fit
