"""The report's Findings section: the over-optimisation laws fitted by least squares, a run's gold
peak and fall read from its own rows, and the section drawn from them."""

from __future__ import annotations

import json
import math

import pytest

from rlhfkit.monitor.findings import fit_law, overoptimisation
from rlhfkit.monitor.report import write_report


@pytest.mark.parametrize("form,alpha,beta", [("bon", 0.4, 0.15), ("rl", 0.3, 0.12)])
def test_fit_law_recovers_the_coefficients_of_exact_law_data(form, alpha, beta):
    """Points on gain = d(α − βd) or d(α − β log d) are fitted exactly: the normal equations of a
    2-parameter least-squares fit on 12 points of size ~1 are solved in float64 with relative error
    ~1e-14 × the condition number (< 1e4 here), so 1e-9 is a wide bound; R² = 1 − 0/SS_tot."""
    ds = [0.2 * i for i in range(1, 13)]
    gains = [d * (alpha - beta * (d if form == "bon" else math.log(d))) for d in ds]
    fit = fit_law(ds, gains, form)
    assert fit.alpha == pytest.approx(alpha, abs=1e-9) and fit.beta == pytest.approx(beta, abs=1e-9)
    assert fit.r2 == pytest.approx(1.0, abs=1e-9)
    # The fitted peak is where the law's derivative vanishes: bon d* = α/2β, rl d* = exp(α/β − 1).
    d_star = alpha / (2 * beta) if form == "bon" else math.exp(alpha / beta - 1)
    assert fit.peak_kl == pytest.approx(d_star**2, rel=1e-9)
    assert fit.gain(d_star) > max(fit.gain(d_star * 0.99), fit.gain(d_star * 1.01))


def test_fit_law_without_a_peak_and_with_too_few_points():
    ds = [0.5, 1.0, 1.5, 2.0]
    assert fit_law(ds, [0.3 * d for d in ds], "bon").peak_kl is None  # β = 0: gold still rising
    with pytest.raises(ValueError):
        fit_law([0.0, 1.0, 2.0], [0.0, 0.1, 0.2], "rl")  # d = 0 points are dropped: 2 left


def _rows(steps: int, gold, proxy, noise: float, std=None) -> list[dict]:
    """Online-RL metric rows with a deterministic ±noise alternation on gold (the sampling noise)."""
    rows = []
    for s in range(1, steps + 1):
        kl = 0.1 * s  # KL grows linearly with the step
        row = {"step": s, "stage": "grpo", "kl/mean": kl, "gold/mean": gold(s) + (noise if s % 2 else -noise),
               "reward/mean": proxy(s)}
        if std is not None:
            row["reward/ensemble_std"] = std(s)
        rows.append(row)
    return rows


def _rise_fall(s: int) -> float:
    return 0.4 * min(s, 40) / 40 - 0.02 * max(s - 40, 0)  # up to 0.4 at step 40, then down 0.02 a step


def test_overoptimisation_finds_the_peak_the_fall_and_the_early_disagreement():
    rows = _rows(80, _rise_fall, lambda s: 0.05 * s, 0.05, std=lambda s: 0.2 + 0.012 * max(s - 20, 0))
    o = overoptimisation(rows, window=8)
    # Trailing 8-step means lag a peak by up to half a window: it is found within steps 40..48.
    assert 40 <= o.peak_step <= 48 and o.fell and o.proxy_rose_after_peak
    # End window = steps 73..80: true gold 0.4 − 0.02·(36.5) = −0.33, the ±0.05 alternation averages out.
    assert o.gold_end == pytest.approx(0.4 - 0.02 * 36.5, abs=1e-9)
    # std reaches 1.25 × its first window (0.2), i.e. 0.25, when 0.012 × the mean of max(j − 20, 0)
    # over j = s−7..s reaches 0.05: at s = 27 that mean is 3.5 (0.042), at s = 28 it is 4.5 (0.054).
    assert o.disagreement_rise_step == 28 and o.disagreement_rise_step < o.peak_step
    assert o.fit is not None and o.fit.beta > 0  # the rise-then-fall has a maximum


def test_a_noisy_plateau_is_not_over_optimisation():
    """Flat gold with ±0.05 alternating noise: 5-step means alternate 0.2 ± 0.01, so the best window
    beats the last by at most 0.02, while step differences of ±0.1 give σ ≈ 0.1/√2 and a fall's
    standard error √2·σ/√5 ≈ 0.045: the bar, 3 of them, is ≈ 0.13."""
    o = overoptimisation(_rows(60, lambda s: 0.2, lambda s: 0.05 * s, 0.05), window=5)
    assert not o.fell
    assert overoptimisation(_rows(10, lambda s: 0.2, lambda s: 0.0, 0.0), window=5) is None  # < 3 windows


def _write_run(folder, rows):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_report_states_the_runs_own_over_optimisation(tmp_path):
    run = _write_run(tmp_path / "grpo_beta0", _rows(80, _rise_fall, lambda s: 0.05 * s, 0.05,
                                                     std=lambda s: 0.2 + 0.012 * max(s - 20, 0)))
    page = write_report(run).read_text()
    findings = page[page.index("<h2>Findings</h2>") : page.index("<h2>Reward-hacking alarms</h2>")]
    assert "Over-optimisation" in findings and "while the proxy reward kept rising" in findings
    assert "d(α − β log d)" in findings and "before the gold peak" in findings
    assert (run / "report_plots" / "law_grpo.png").exists()  # the run's path with its fitted law


def test_report_findings_say_no_fall_and_not_available(tmp_path):
    flat = _write_run(tmp_path / "flat", _rows(60, lambda s: 0.2, lambda s: 0.05 * s, 0.05))
    page = write_report(flat).read_text()
    assert "did not fall clearly" in page and "Over-optimisation:" not in page
    no_gold = _write_run(tmp_path / "nogold", [{"step": s, "stage": "grpo", "kl/mean": 0.1 * s, "reward/mean": 0.1}
                                               for s in range(1, 40)])
    page = write_report(no_gold).read_text()
    findings = page[page.index("<h2>Findings</h2>") : page.index("<h2>Reward-hacking alarms</h2>")]
    assert "not available" in findings
