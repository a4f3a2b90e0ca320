"""Reward-hacking alarms on synthetic metric streams: each must fire on its failure and stay quiet
on healthy and on merely noisy runs."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass

import pytest

from rlhfkit.config import load_config, section
from rlhfkit.monitor.alarms import (
    AlarmMonitor,
    MonitorConfig,
    best_score,
    correlation,
    read_alarms,
    scan,
    trend,
)


def rows_from(n: int, **fns) -> list[dict]:
    """Rows for steps 1..n; each keyword is metric-name-with-__-for-/ -> f(step) (None = not logged)."""
    out = []
    for s in range(1, n + 1):
        row = {"step": s, "stage": "ppo"}
        for key, f in fns.items():
            v = f(s)
            if v is not None:
                row[key.replace("__", "/")] = v
        out.append(row)
    return out


def names(alarms) -> set[str]:
    return {a.name for a in alarms}


# ----------------------------------------------------------------------------- statistics


def test_trend_matches_hand_worked_numbers():
    """xs = 0, 1, 2 and ys = 0, 1, 3:  x̄ = 1, ȳ = 4/3, Sxx = 2, Sxy = (−1)(−4/3) + (1)(5/3) = 3,
    so b = 3/2.  Syy = (16 + 1 + 25)/9 = 14/3, SSE = Syy − b·Sxy = 14/3 − 9/2 = 1/6,
    se(b) = sqrt(SSE / (n − 2) / Sxx) = sqrt(1/12), t = 1.5 · sqrt(12) = 3·sqrt(3) ≈ 5.196."""
    b, t = trend([0, 1, 2], [0, 1, 3])
    assert b == pytest.approx(1.5, abs=1e-12)
    assert t == pytest.approx(3 * math.sqrt(3), abs=1e-9)
    assert trend([0, 1, 2, 3], [1, 3, 5, 7]) == (pytest.approx(2.0), math.inf)  # exact line: t = +inf
    assert trend([0, 1], [0, 1]) == (0.0, 0.0)  # two points carry no evidence
    # r of (1, 2, 3) and (2, 4, 7): Sxy = 5, Sxx = 2, Syy = 12.667 → 5 / sqrt(25.333) = 0.99340
    assert correlation([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / math.sqrt(2 * 38 / 3), abs=1e-12)


# ----------------------------------------------------------------------------- no false alarms


@pytest.mark.parametrize("seed", range(20))
def test_healthy_run_raises_no_alarm(seed):
    """Proxy and gold both rising with noise, KL growing to ~8 nats, length and perplexity steady."""
    rng = random.Random(seed)
    rows = rows_from(
        120,
        reward__mean=lambda s: 0.02 * s + rng.gauss(0, 0.15),
        gold__mean=lambda s: 0.3 + 0.004 * s + rng.gauss(0, 0.05),
        reward__ensemble_std=lambda s: 0.3 + 0.0005 * s + rng.gauss(0, 0.02),
        kl__mean=lambda s: 8 * s / 120 + abs(rng.gauss(0, 0.5)),
        response__length=lambda s: 20 + rng.gauss(0, 1.5),
        eval__perplexity=lambda s: 12.0 * (1 + 0.0008 * s) + rng.gauss(0, 0.1) if s % 10 == 0 else None,
    )
    assert scan(rows) == []


@pytest.mark.parametrize("seed", range(20))
def test_plateau_of_pure_noise_raises_no_alarm(seed):
    """Every metric flat with noise: windowed slopes must not mistake noise for a trend."""
    rng = random.Random(100 + seed)
    rows = rows_from(
        150,
        reward__mean=lambda s: rng.gauss(1.0, 0.3),
        gold__mean=lambda s: rng.gauss(0.5, 0.1),
        reward__ensemble_std=lambda s: rng.gauss(0.4, 0.05),
        kl__mean=lambda s: abs(rng.gauss(5, 2)),
        response__length=lambda s: rng.gauss(20, 3),
    )
    assert scan(rows) == []


# ----------------------------------------------------------------------------- each alarm fires


@pytest.mark.parametrize("seed", range(5))
def test_proxy_up_gold_down_fires_after_the_gold_peak(seed):
    """Gao et al.'s over-optimisation shape: gold rises until step 40, then falls, proxy keeps rising."""
    rng = random.Random(seed)
    rows = rows_from(
        100,
        reward__mean=lambda s: 0.05 * s + rng.gauss(0, 0.1),
        gold__mean=lambda s: (0.01 * s if s <= 40 else 0.4 - 0.02 * (s - 40)) + rng.gauss(0, 0.03),
    )
    alarms = scan(rows)
    assert names(alarms) == {"proxy_gold"}
    a = alarms[0]
    assert 45 <= a.step <= 60, a
    assert a.evidence["proxy_t"] >= 3 and a.evidence["gold_t"] <= -3
    assert 35 <= a.evidence["gold_peak_step"] <= 45
    assert a.evidence["correlation"] < 0
    json.dumps(a.to_json())  # evidence is plain JSON


def test_proxy_gold_uses_only_rows_that_carry_gold():
    """Gold measured every 5th step (an eval cadence) still gives a window of points with both."""
    rows = rows_from(
        120,
        reward__mean=lambda s: 0.05 * s,
        gold__mean=lambda s: (1.0 - 0.01 * s + 0.001 * (s % 3)) if s % 5 == 0 else None,
    )
    alarms = scan(rows)
    assert names(alarms) == {"proxy_gold"}
    assert alarms[0].step == 40  # the 8th row with gold: min_points = 8
    assert alarms[0].evidence["window_steps"] == [5, 40]


def test_ensemble_disagreement_growing_faster_than_reward_fires():
    rng = random.Random(0)
    rows = rows_from(
        80,
        reward__mean=lambda s: 0.005 * s + rng.gauss(0, 0.02),
        reward__ensemble_std=lambda s: 0.3 + (0.02 * (s - 30) if s > 30 else 0) + rng.gauss(0, 0.01),
    )
    alarms = scan(rows)
    assert names(alarms) == {"ensemble_disagreement"}
    ev = alarms[0].evidence
    assert 35 <= alarms[0].step <= 50
    assert ev["std_slope"] > ev["reward_slope"] and ev["std_growth"] >= 0.25


def test_ensemble_std_growing_slower_than_reward_is_fine():
    """std grows 40% but reward climbs ten times faster in the same units: that is learning."""
    rng = random.Random(1)
    rows = rows_from(
        80,
        reward__mean=lambda s: 0.05 * s + rng.gauss(0, 0.05),
        reward__ensemble_std=lambda s: 0.3 + 0.0015 * s + rng.gauss(0, 0.005),
    )
    assert scan(rows) == []


def test_kl_runaway_needs_patience_and_reports_beta():
    """One spike past the bound is noise; three rows in a row past it is a runaway (step 62)."""
    rows = rows_from(
        80,
        kl__mean=lambda s: 50.0 if s == 20 else (25.0 if s >= 60 else 5.0),
        kl__beta=lambda s: 0.0,
    )
    alarms = scan(rows, MonitorConfig(kl_max=20.0, kl_patience=3))
    assert [(a.name, a.step) for a in alarms] == [("kl_runaway", 62)]
    assert alarms[0].evidence == {"kl_max": 20.0, "kl_recent": [25.0, 25.0, 25.0], "steps": [60, 61, 62], "beta": 0.0}
    assert scan(rows, MonitorConfig(kl_max=None)) == []


def test_length_drift_fires_at_the_hand_worked_step():
    """Length 20 for steps 1..49, then 32. Baseline = first window = 20. The trailing mean of 10 with
    k rows at 32 is (32k + 20(10 − k))/10 = 20 + 1.2k; drift > 0.5 needs 1.2k > 10, k ≥ 9: the 9th row
    at 32 is step 58."""
    rows = rows_from(80, response__length=lambda s: 20.0 if s < 50 else 32.0)
    alarms = scan(rows)
    assert [(a.name, a.step) for a in alarms] == [("length_drift", 58)]
    assert alarms[0].evidence["recent_length"] == pytest.approx(20 + 1.2 * 9)
    # shrinking responses drift too: 20 -> 8 is −60%
    assert names(scan(rows_from(80, response__length=lambda s: 20.0 if s < 50 else 8.0))) == {"length_drift"}


def test_perplexity_degradation_past_the_bound():
    """Baseline 10 (first eval); +24% is within the 25% bound, +26% is past it (the step-40 eval)."""
    ppl = {10: 10.0, 20: 11.0, 30: 12.4, 40: 12.6}
    rows = rows_from(40, eval__perplexity=lambda s: ppl.get(s))
    alarms = scan(rows)
    assert [(a.name, a.step) for a in alarms] == [("perplexity", 40)]
    assert alarms[0].evidence["increase"] == pytest.approx(0.26)
    # a pinned baseline (the SFT model's perplexity) is used from the first eval on: 10 / 7.5 = +33%
    assert [a.step for a in scan(rows, baselines={"eval/perplexity": 7.5})] == [10]
    assert [a.step for a in scan(rows, baselines={"eval/perplexity": 8.0})] == [20]  # +25% is not past 25%


# ----------------------------------------------------------------------------- the streaming monitor


def hacked_rows():
    return rows_from(
        60,
        reward__mean=lambda s: 0.05 * s,
        gold__mean=lambda s: 0.01 * s if s <= 20 else 0.2 - 0.02 * (s - 20) + 0.001 * (s % 2),
        reward__ensemble_std=lambda s: 0.1,
    )


def test_monitor_writes_alarms_once_and_stop_action_stops(tmp_path):
    path = tmp_path / "alarms.jsonl"
    mon = AlarmMonitor(MonitorConfig(action="stop", alarms=["proxy_gold"]), stage="ppo", path=path, verbose=False)
    fired_at = []
    for r in hacked_rows():
        if mon.update(r["step"], {k: v for k, v in r.items() if k not in ("step", "stage")}):
            fired_at.append(r["step"])
        if mon.should_stop:
            break
    assert fired_at == [mon.alarms[0].step] and mon.should_stop
    saved = read_alarms(path)
    assert [(a.name, a.stage, a.action, a.step) for a in saved] == [("proxy_gold", "ppo", "stop", fired_at[0])]
    # gold peaked at step 20: the best step by the default best metric (gold/mean, max)
    assert mon.best_step == 20 and mon.best_value == pytest.approx(0.2)


def test_keep_best_with_a_disagreement_penalty():
    """score = reward − 2·std: rows (r, std) = (1, 0.1) → 0.8, (2, 0.3) → 1.4, (3, 0.9) → 1.2: step 2 wins."""
    cfg = MonitorConfig(action="keep_best", best_metric="reward/mean", best_disagreement_penalty=2.0)
    mon = AlarmMonitor(cfg, verbose=False)
    improved = []
    for step, (r, std) in enumerate([(1, 0.1), (2, 0.3), (3, 0.9)], start=1):
        mon.update(step, {"reward/mean": r, "reward/ensemble_std": std})
        improved.append(mon.improved)
    assert improved == [True, True, False]
    assert mon.best_step == 2 and mon.best_value == pytest.approx(1.4)
    assert best_score({"reward/mean": 1.0}, cfg) is None  # no std logged: no score
    assert not mon.should_stop


def test_restore_replays_history_and_drops_alarms_past_the_resumed_step(tmp_path):
    path = tmp_path / "alarms.jsonl"
    rows = hacked_rows()
    mon = AlarmMonitor(MonitorConfig(), stage="ppo", path=path, verbose=False)
    for r in rows:
        mon.update(r["step"], {k: v for k, v in r.items() if k not in ("step", "stage")})
    fired = mon.alarms[0].step
    other = {"name": "kl_runaway", "step": 999, "message": "", "evidence": {}, "stage": "sft", "action": "warn"}
    with open(path, "a") as f:
        f.write(json.dumps(other) + "\n")
    # resume before the alarm: it is dropped from the file, and fires again at the same step
    resumed = AlarmMonitor(MonitorConfig(), stage="ppo", path=path, verbose=False)
    resumed.restore(rows, fired - 5)
    assert [(a.stage, a.step) for a in read_alarms(path)] == [("sft", 999)]  # other stages kept
    again = [a for r in rows if r["step"] > fired - 5
             for a in resumed.update(r["step"], {k: v for k, v in r.items() if k not in ("step", "stage")})]
    assert [(a.name, a.step) for a in again] == [("proxy_gold", fired)]
    # resume after the alarm: it stays latched and does not fire twice
    later = AlarmMonitor(MonitorConfig(), stage="ppo", path=None, verbose=False)
    later.restore(rows, fired + 2)
    assert [a.name for a in later.alarms] == ["proxy_gold"]
    assert later.update(fired + 3, rows[fired + 2]) == []


def test_monitor_config_nests_in_a_recipe_config_and_validates(tmp_path):
    @dataclass(frozen=True)
    class RecipeConfig:
        monitor: MonitorConfig = section(MonitorConfig, "alarms")

    cfg = load_config(RecipeConfig, None, ["monitor.kl_max=null", "monitor.action=keep_best",
                                           "monitor.alarms=[kl_runaway, perplexity]"])
    assert cfg.monitor.kl_max is None and cfg.monitor.action == "keep_best"
    assert cfg.monitor.alarms == ["kl_runaway", "perplexity"]
    with pytest.raises(ValueError, match="unknown alarm 'nope'"):
        AlarmMonitor(MonitorConfig(alarms=["nope"]))
    assert AlarmMonitor(MonitorConfig(enabled=False)).update(1, {"kl/mean": 1e9}) == []
