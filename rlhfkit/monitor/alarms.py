"""Reward-hacking alarms over a run's metric rows, as pure checks plus a streaming monitor.

Each check reads the rows logged so far by one stage (`metrics.jsonl` lines, oldest first) and
returns an `Alarm` when its condition holds at the newest row, else None:

    proxy_gold             proxy reward rising while gold falls over the trailing window
                           (Gao et al. 2023, "Scaling laws for reward model overoptimization"):
                           least-squares slopes of both, each significant at |t| >= t_min
    ensemble_disagreement  `reward/ensemble_std` rising faster than the reward it qualifies, in the
                           same (reward) units: slope(std) > slope(reward) with t(std) >= t_min, and
                           std up by >= ensemble_min_growth relative to the first window (Coste et al.
                           2024, "Reward model ensembles help mitigate overoptimization")
    kl_runaway             `kl/mean` above kl_max for kl_patience rows in a row
    length_drift           mean response length of the trailing window off the first window's
                           by more than length_max_drift (relative), a classic proxy exploit
    perplexity             `eval/perplexity` above its baseline by more than perplexity_max_increase
                           (relative): the policy is forgetting language (alignment tax)

The slope of y against step x over n points is b = Sxy / Sxx with standard error
se = sqrt(SSE / (n - 2) / Sxx) and t = b / se; a window needs `min_points` rows that carry the
metric(s) before a check may fire, so the first noisy steps cannot raise a false alarm.

`AlarmMonitor` calls the checks after every logged step, latches each alarm (it fires once per
stage), appends it to `alarms.jsonl` (one `Alarm.to_json()` per line, flushed), prints it, and
applies the configured action; recipes nest `MonitorConfig` in their config:

    mon = AlarmMonitor(cfg.monitor, stage="ppo", path=out / "alarms.jsonl" if s.is_main else None)
    mon.restore(read_metrics(out, "ppo"), start)          # on resume: replay, drop later alarms
    for step in ...:
        s.log(step + 1, metrics)
        mon.update(step + 1, metrics)
        if mon.improved: save a snapshot (action keep_best: final/ = the best snapshot)
        if mon.should_stop: break                          # action stop

`scan(rows, cfg)` replays a finished log offline; the report uses it for runs that had no monitor.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlhfkit.config import doc
from rlhfkit.data.jsonl import read_jsonl

ALL_ALARMS = ["proxy_gold", "ensemble_disagreement", "kl_runaway", "length_drift", "perplexity"]


@dataclass(frozen=True)
class MonitorConfig:
    enabled: bool = doc(True, "check the alarms after every logged step")
    alarms: list[str] = doc(list(ALL_ALARMS), "which alarms to check: " + ", ".join(ALL_ALARMS))
    action: Literal["warn", "stop", "keep_best"] = doc(
        "warn", "on an alarm: warn = log it and go on; stop = end training at that step; "
        "keep_best = go on, and final/ is the best step by best_metric")
    window: int = doc(10, "trailing window, in rows carrying the metric, for slopes and drift")
    min_points: int = doc(8, "rows a window needs before a slope alarm may fire")
    t_min: float = doc(3.0, "slope t-statistic a trend needs to count as real (about p < 0.01)")
    proxy_key: str = doc("reward/mean", "the optimised (proxy) reward metric")
    gold_key: str = doc("gold/mean", "the held-out judge's metric (lab gold or any other judge)")
    ensemble_min_growth: float = doc(0.25, "ensemble std must also have grown this much relative to its first window")
    kl_max: float | None = doc(20.0, "KL bound in nats per sequence (kl/mean); null = no bound")
    kl_patience: int = doc(3, "consecutive rows above kl_max before the alarm fires")
    length_max_drift: float = doc(0.5, "relative change of mean response length vs the first window")
    perplexity_max_increase: float = doc(0.25, "relative increase of eval/perplexity over its baseline")
    best_metric: str = doc("gold/mean", "metric that picks the best step (keep_best; reported always)")
    best_mode: Literal["max", "min"] = doc("max", "whether a larger or smaller best_metric is better")
    best_disagreement_penalty: float = doc(0.0, "score = best_metric - this * reward/ensemble_std (an "
                                           "uncertainty-penalised proxy when best_metric is reward/mean)")


@dataclass(frozen=True)
class Alarm:
    name: str
    step: int
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    stage: str | None = None
    action: str = "warn"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Alarm:
        return cls(d["name"], int(d["step"]), d.get("message", ""), d.get("evidence", {}), d.get("stage"),
                   d.get("action", "warn"))


# ----------------------------------------------------------------------------- statistics


def series(rows: Sequence[dict], *keys: str) -> list[tuple[float, ...]]:
    """(step, value_1, ..., value_k) for each row carrying every key as a finite number."""
    out = []
    for r in rows:
        vals = [r.get(k) for k in keys]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vals):
            out.append((float(r["step"]), *map(float, vals)))
    return out


def trend(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope b of ys on xs and its t-statistic b / se(b); t = ±inf for a perfect fit.

    b = Sxy / Sxx,  se(b) = sqrt(SSE / (n - 2) / Sxx),  SSE = Syy - b Sxy.  Needs n >= 3.
    """
    n = len(xs)
    if n < 3:
        return 0.0, 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0:
        return 0.0, 0.0
    b = sxy / sxx
    sse = max(syy - b * sxy, 0.0)
    if sse <= 1e-12 * max(syy, 1e-300):
        return b, (math.copysign(math.inf, b) if b != 0 else 0.0)
    return b, b / math.sqrt(sse / (n - 2) / sxx)


def correlation(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson correlation; 0 when either series is constant."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else 0.0


def _mean(v: Sequence[float]) -> float:
    return sum(v) / len(v)


def _r(x: float) -> float:
    return round(float(x), 4) if math.isfinite(x) else float(x)


# ----------------------------------------------------------------------------- the checks
# Each: (rows of one stage so far, config, baselines) -> Alarm | None, judged at the newest row.

Check = Callable[[Sequence[dict], MonitorConfig, dict], "Alarm | None"]


def check_proxy_gold(rows: Sequence[dict], cfg: MonitorConfig, baselines: dict) -> Alarm | None:
    pts = series(rows, cfg.proxy_key, cfg.gold_key)[-cfg.window :]
    if len(pts) < cfg.min_points:
        return None
    steps, proxy, gold = zip(*pts, strict=True)
    bp, tp = trend(steps, proxy)
    bg, tg = trend(steps, gold)
    if not (tp >= cfg.t_min and tg <= -cfg.t_min):
        return None
    span = steps[-1] - steps[0]
    all_gold = series(rows, cfg.gold_key)
    peak_step, peak = max(((s, g) for s, g in all_gold), key=lambda p: p[1])
    ev = {"window_steps": [int(steps[0]), int(steps[-1])], "proxy_slope": _r(bp), "proxy_t": _r(tp),
          "gold_slope": _r(bg), "gold_t": _r(tg), "proxy_change": _r(bp * span), "gold_change": _r(bg * span),
          "correlation": _r(correlation(proxy, gold)), "gold_peak": _r(peak), "gold_peak_step": int(peak_step),
          "gold_now": _r(gold[-1]), "proxy_key": cfg.proxy_key, "gold_key": cfg.gold_key}
    msg = (f"proxy reward rising ({bp * span:+.3g} over steps {int(steps[0])}-{int(steps[-1])}, t={tp:.1f}) "
           f"while gold falls ({bg * span:+.3g}, t={tg:.1f}); gold peaked at {peak:.3g} at step {int(peak_step)}")
    return Alarm("proxy_gold", int(steps[-1]), msg, ev)


def check_ensemble_disagreement(rows: Sequence[dict], cfg: MonitorConfig, baselines: dict) -> Alarm | None:
    key = "reward/ensemble_std"
    pts = series(rows, key, cfg.proxy_key)
    if len(pts) < max(cfg.min_points, cfg.window + 1):
        return None
    first = [p[1] for p in pts[: cfg.window]]
    steps, std, reward = zip(*pts[-cfg.window :], strict=True)
    bs, ts = trend(steps, std)
    br, _ = trend(steps, reward)
    base = baselines.get(key, _mean(first))
    growth = _mean(std) / base - 1 if base > 0 else math.inf
    if not (ts >= cfg.t_min and bs > br and growth >= cfg.ensemble_min_growth):
        return None
    span = steps[-1] - steps[0]
    ev = {"window_steps": [int(steps[0]), int(steps[-1])], "std_slope": _r(bs), "std_t": _r(ts),
          "reward_slope": _r(br), "std_baseline": _r(base), "std_now": _r(std[-1]), "std_growth": _r(growth),
          "std_change": _r(bs * span), "reward_change": _r(br * span)}
    msg = (f"ensemble disagreement growing faster than reward: std {bs * span:+.3g} vs reward {br * span:+.3g} "
           f"over steps {int(steps[0])}-{int(steps[-1])}; std {growth:+.0%} vs its first window")
    return Alarm("ensemble_disagreement", int(steps[-1]), msg, ev)


def check_kl_runaway(rows: Sequence[dict], cfg: MonitorConfig, baselines: dict) -> Alarm | None:
    if cfg.kl_max is None:
        return None
    pts = series(rows, "kl/mean")[-cfg.kl_patience :]
    if len(pts) < cfg.kl_patience or not all(v > cfg.kl_max for _, v in pts):
        return None
    beta = series(rows, "kl/beta")
    ev = {"kl_max": cfg.kl_max, "kl_recent": [_r(v) for _, v in pts], "steps": [int(s) for s, _ in pts],
          "beta": _r(beta[-1][1]) if beta else None}
    msg = f"KL {pts[-1][1]:.3g} nats above the bound {cfg.kl_max:g} for {cfg.kl_patience} rows in a row"
    return Alarm("kl_runaway", int(pts[-1][0]), msg, ev)


def check_length_drift(rows: Sequence[dict], cfg: MonitorConfig, baselines: dict) -> Alarm | None:
    pts = series(rows, "response/length")
    if len(pts) < 2 * cfg.window and "response/length" not in baselines:
        return None
    base = baselines.get("response/length", _mean([v for _, v in pts[: cfg.window]]))
    recent = pts[-cfg.window :]
    if len(recent) < min(cfg.window, cfg.min_points) or base <= 0:
        return None
    now = _mean([v for _, v in recent])
    drift = now / base - 1
    if abs(drift) <= cfg.length_max_drift:
        return None
    ev = {"baseline_length": _r(base), "recent_length": _r(now), "drift": _r(drift),
          "bound": cfg.length_max_drift, "window_steps": [int(recent[0][0]), int(recent[-1][0])]}
    msg = f"mean response length {now:.3g} tokens is {drift:+.0%} off its baseline {base:.3g}"
    return Alarm("length_drift", int(recent[-1][0]), msg, ev)


def check_perplexity(rows: Sequence[dict], cfg: MonitorConfig, baselines: dict) -> Alarm | None:
    pts = series(rows, "eval/perplexity")
    if not pts or ("eval/perplexity" not in baselines and len(pts) < 2):
        return None
    base = baselines.get("eval/perplexity", pts[0][1])
    now = pts[-1][1]
    rise = now / base - 1
    if rise <= cfg.perplexity_max_increase:
        return None
    ev = {"baseline_perplexity": _r(base), "perplexity": _r(now), "increase": _r(rise),
          "bound": cfg.perplexity_max_increase}
    msg = f"held-out perplexity {now:.4g} is {rise:+.0%} above its baseline {base:.4g}"
    return Alarm("perplexity", int(pts[-1][0]), msg, ev)


CHECKS: dict[str, Check] = {
    "proxy_gold": check_proxy_gold,
    "ensemble_disagreement": check_ensemble_disagreement,
    "kl_runaway": check_kl_runaway,
    "length_drift": check_length_drift,
    "perplexity": check_perplexity,
}


def best_score(row: dict, cfg: MonitorConfig) -> float | None:
    """The keep-best score of one row: best_metric - penalty * reward/ensemble_std, or None."""
    v = row.get(cfg.best_metric)
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    if cfg.best_disagreement_penalty:
        std = row.get("reward/ensemble_std")
        if not isinstance(std, (int, float)):
            return None
        v = v - cfg.best_disagreement_penalty * std
    return float(v)


# ----------------------------------------------------------------------------- streaming


class AlarmMonitor:
    """Runs the configured checks after every logged step of one stage; see the module docstring.

    `baselines` pins reference values (e.g. the SFT model's eval/perplexity and response/length)
    instead of taking them from the run's own first window.
    """

    def __init__(self, cfg: MonitorConfig | None = None, stage: str | None = None, path: str | Path | None = None,
                 baselines: dict[str, float] | None = None, verbose: bool = True):
        self.cfg = cfg or MonitorConfig()
        unknown = [a for a in self.cfg.alarms if a not in CHECKS]
        if unknown:
            raise ValueError(f"unknown alarm {unknown[0]!r}; known: {', '.join(CHECKS)}")
        self.stage, self.path, self.verbose = stage, Path(path) if path else None, verbose
        self.baselines = dict(baselines or {})
        if self.path is not None and not self.path.exists():
            # An empty file says "a monitor watched this stage and nothing fired" to the report.
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
        self.rows: list[dict] = []
        self.alarms: list[Alarm] = []
        self.best_step: int | None = None
        self.best_value: float | None = None
        self.improved = False  # the latest update set a new best score
        self.should_stop = False

    def update(self, step: int, metrics: dict[str, Any], record: bool = True) -> list[Alarm]:
        """Add one logged row; returns the alarms that fired at it (each alarm fires once)."""
        self.rows.append({"step": step, **metrics})
        self.improved = False
        score = best_score(self.rows[-1], self.cfg)
        if score is not None and (self.best_value is None or
                                  (score > self.best_value if self.cfg.best_mode == "max" else score < self.best_value)):
            self.best_step, self.best_value, self.improved = step, score, True
        if not self.cfg.enabled:
            return []
        fired = []
        seen = {a.name for a in self.alarms}
        for name in self.cfg.alarms:
            if name in seen:
                continue
            alarm = CHECKS[name](self.rows, self.cfg, self.baselines)
            if alarm is not None:
                alarm = Alarm(alarm.name, step, alarm.message, alarm.evidence, self.stage, self.cfg.action)
                fired.append(alarm)
        self.alarms.extend(fired)
        if fired and self.cfg.action == "stop":
            self.should_stop = True
        if record:
            for a in fired:
                self._record(a)
        return fired

    def restore(self, rows: Sequence[dict], step: int) -> None:
        """Resume: replay this stage's rows up to `step` silently and drop later alarms from the file."""
        for r in rows:
            if r.get("step", 0) <= step and (self.stage is None or r.get("stage") in (None, self.stage)):
                self.update(int(r["step"]), {k: v for k, v in r.items() if k not in ("step", "stage")}, record=False)
        self.should_stop = False  # a stopped run that is resumed was resumed on purpose
        if self.path is not None and self.path.exists():
            kept = [x for x in read_alarms(self.path)
                    if not (x.stage == self.stage and x.step > step)]
            _write_lines(self.path, [json.dumps(a.to_json()) for a in kept])

    def summary(self) -> dict[str, Any]:
        return {"alarms": [a.to_json() for a in self.alarms], "best_step": self.best_step,
                "best_value": self.best_value, "best_metric": self.cfg.best_metric}

    def _record(self, alarm: Alarm) -> None:
        if self.verbose:
            print(f"[alarm] {alarm.stage or ''} step {alarm.step}: {alarm.name}: {alarm.message} "
                  f"(action: {alarm.action})", flush=True)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(alarm.to_json()) + "\n")
                f.flush()
                os.fsync(f.fileno())


def scan(rows: Sequence[dict], cfg: MonitorConfig | None = None, baselines: dict | None = None) -> list[Alarm]:
    """Replay a finished log (one stage's rows) through a monitor; the alarms it would have raised."""
    stage = rows[0].get("stage") if rows else None
    mon = AlarmMonitor(cfg, stage=stage, baselines=baselines, verbose=False)
    for r in sorted(rows, key=lambda r: r.get("step", 0)):
        mon.update(int(r.get("step", 0)), {k: v for k, v in r.items() if k not in ("step", "stage")}, record=False)
    return mon.alarms


def read_alarms(path: str | Path) -> list[Alarm]:
    path = Path(path)
    if not path.exists():
        return []
    return [Alarm.from_json(x) for x in read_jsonl(path, torn_tail="skip")]


def _write_lines(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(x + "\n" for x in lines))
    os.replace(tmp, path)
