"""A run folder read into typed data for the report: every file is optional, nothing is drawn here.

Layout read:

    RUN/metrics.jsonl               a single-stage run: that stage's rows
    RUN/<stage>/metrics.jsonl       a pipeline: one run folder per stage (sft/, reward/, ppo/, dpo/,
                                    also one level deeper, e.g. round-1/ppo/); order: sft, compare,
                                    reward, ppo, dpo, then others by name
    <stage>/config.yaml             the resolved config: its `monitor:` section (which alarms, the
                                    best_metric) and data sources
    <stage>/final/run_complete.json the stage is complete: {"stage", "seconds", "steps", provenance
                                    keys (PROVENANCE), "best_metric", "best_step", ...}; a reward-model
    <stage>/final/ensemble.json       ensemble's final/ holds this manifest instead
    <stage>/members/*/metrics.jsonl reward-model ensemble members (curves per member)
    <stage>/comparisons.jsonl       a compare stage: the comparisons collected
    <stage>/alarms.jsonl            alarms logged during training (`Alarm.to_json()` per line); a
    RUN/alarms.jsonl                  stage without one (no monitor ran) is scanned at report time
                                    with its `monitor:` config section, or the defaults
    <stage>/reward_eval.json        held-out reward-model evaluation as the reward recipe writes it:
      (or <stage>/final/eval.json)  {"eval/accuracy", "eval/margin", "eval/ece", "eval/pairs",
                                    "calibration": [...], "gold/agreement"?}; for an ensemble
                                    {"member-0": {...}, ..., "mean": {...}, "min", "uwo"}
    RUN/summary.json                held-out evaluation of each model in pipeline order, with its
                                    provenance keys: {"base": {"gold/mean": .., "eval/perplexity_on": ..}}
    RUN/frontier.json               [{"method": "ppo", "kl": 4.1, "gold": 0.62, "label": "β=0.05"}, ...]
    RUN/samples.json                [{"prompt": str, "responses": {"sft": str, ..}, "gold"?: {..}}]
                                    (or {"rows": [...]})

A folder reused by a later run may still hold an older run's rows: a stage's rows are those of the
run that wrote last (the newest row's `stage`, from the last restart of its step numbering on).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from rlhfkit.config import ConfigError, build
from rlhfkit.data.jsonl import read_jsonl
from rlhfkit.errors import UserError
from rlhfkit.monitor.alarms import MonitorConfig, best_score, read_alarms, scan
from rlhfkit.monitor.findings import OverOpt, overoptimisation

STAGE_ORDER = ["sft", "compare", "thumbs", "reward", "ppo", "grpo", "rloo", "dpo", "kto", "orpo"]
SKIP_DIRS = {"checkpoints", "final", "members", "report_plots", "best"}
# What held-out numbers were measured on, as recipes record it (run_complete.json, summary.json).
PROVENANCE = ["gold/judge", "eval/prompts_on", "eval/perplexity_on", "normalize/prompts_on", "reward/source"]


class RunFolderNotFound(UserError):
    """The folder to report on does not exist."""


@dataclass(frozen=True)
class Best:
    """The best logged step by the stage's monitor.best_metric (the keep-best rule)."""

    step: int
    metric: str
    mode: str  # "max" or "min"
    value: float | None
    source: str  # "run_complete.json" (the monitor's own record) or "metrics.jsonl" (recomputed)


@dataclass
class Stage:
    name: str  # path relative to the run folder ("." for a single-stage run)
    path: Path
    kind: str  # the `stage` field of its rows (sft, reward, ppo, dpo, ...) or the folder name
    rows: list[dict]  # this stage's rows of the run that wrote last
    complete: dict | None  # run_complete.json (an ensemble's: built from its manifest and members)
    config: dict = field(default_factory=dict)  # config.yaml
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    monitor_configured: bool = False  # config.yaml has a monitor: section
    members: dict[str, list[dict]] = field(default_factory=dict)
    alarms: list[dict] = field(default_factory=list)
    alarms_source: str = "logged"  # or "scan" (computed at report time)
    comparisons: int | None = None
    rm_eval: dict[str, dict] | None = None  # {model name: eval dict}
    best: Best | None = None
    overopt: OverOpt | None = None  # online RL with gold: the gold peak and what followed (Findings)

    @property
    def label(self) -> str:
        return self.kind if self.name == "." else self.name

    @property
    def curve_rows(self) -> list[dict]:
        """The rows that carry the training curves: an ensemble's first member when the folder's own
        rows are only the ensemble summary."""
        if self.members and not any(k in r for r in self.rows for k in ("loss/reward", "reward/accuracy")):
            return next(iter(self.members.values()))
        return self.rows

    @property
    def status(self) -> str:
        """complete, collected (a compare stage's comparisons), in progress (rows, no final/), not started."""
        if self.complete:
            return "complete"
        if self.kind == "compare" and self.comparisons:
            return "collected"
        return "in progress" if self.curve_rows else "not started"

    def last_value(self, metric: str) -> Any:
        """The metric's last logged value, else its final evaluation in run_complete.json (recipes
        record it under the metric's name or with '/' as '_', e.g. eval_perplexity); None = neither."""
        if (v := last_logged(self.curve_rows, metric)) is not None:
            return v
        done = self.complete or {}
        return next((done[k] for k in (metric, metric.replace("/", "_")) if is_num(done.get(k))), None)

    @property
    def provenance(self) -> dict[str, str]:
        return {k: v for k, v in (self.complete or {}).items() if k in PROVENANCE and isinstance(v, str)}


@dataclass
class RunData:
    title: str  # the run folder's name
    location: str  # its absolute path, as text
    stages: list[Stage]
    summary: dict[str, dict] | None
    frontier: list[dict]  # plottable points: finite "kl" and "gold"
    frontier_source: str  # where the points come from, or why there are none
    samples: list[dict] | None


def read_run(run_dir: str | Path) -> RunData:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderNotFound(f"run folder not found: {run_dir}")
    stages = discover(run_dir)
    summary = _read_json(run_dir / "summary.json")
    summary = {k: v for k, v in summary.items() if isinstance(v, dict)} if isinstance(summary, dict) else None
    points, source = frontier_points(_read_json(run_dir / "frontier.json"), stages, summary)
    return RunData(run_dir.resolve().name, str(run_dir.resolve()), stages, summary, points, source,
                   sample_rows(_read_json(run_dir / "samples.json")))


# ----------------------------------------------------------------------------- files


def _read_json(path: Path) -> Any:
    """A JSON file's content; None when it is missing or unreadable (the report says "not available")."""
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (ValueError, OSError):
        return None


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = read_jsonl(path, torn_tail="skip")  # a crashed run may leave a torn last line
    return [_numbers(r) for r in rows if isinstance(r, dict)]


def _numbers(row: dict) -> dict:
    """metrics.jsonl keeps NaN/inf as strings; turn them back into floats."""
    return {k: (float(v) if v in ("nan", "inf", "-inf") else v) for k, v in row.items()}


def _read_config(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (yaml.YAMLError, OSError, UnicodeDecodeError):  # an unreadable config is read as no config
        return {}
    return data if isinstance(data, dict) else {}


def _monitor_config(config: dict) -> tuple[MonitorConfig, bool]:
    """The run's monitor settings; keys another rlhfkit version wrote and this one lacks are left out."""
    section = config.get("monitor")
    if not isinstance(section, dict):
        return MonitorConfig(), False
    known = {f.name for f in fields(MonitorConfig)}
    try:
        return build(MonitorConfig, {k: v for k, v in section.items() if k in known}), True
    except ConfigError:  # a value of the wrong type: the defaults are the best reading left
        return MonitorConfig(), False


def current_rows(rows: list[dict]) -> list[dict]:
    """The rows of the run that wrote last: the newest row's stage only, from the last point where
    its step numbering went back (a reused folder's older run) on."""
    if not rows:
        return []
    kind = rows[-1].get("stage")
    mine = [r for r in rows if r.get("stage") == kind]
    start = 0
    for i in range(1, len(mine)):
        if is_num(mine[i].get("step")) and is_num(mine[i - 1].get("step")) and mine[i]["step"] < mine[i - 1]["step"]:
            start = i
    return mine[start:]


def _completion(path: Path) -> dict | None:
    done = _read_json(path / "final" / "run_complete.json")
    if isinstance(done, dict):
        return done
    manifest = _read_json(path / "final" / "ensemble.json")
    if not isinstance(manifest, dict) or not manifest.get("members"):
        return None
    members = [m for name in manifest["members"] if isinstance(m := _read_json(path / "final" / name / "run_complete.json"), dict)]
    first = members[0] if members else {}
    secs = [m.get("seconds") for m in members]
    return {"stage": "reward", "ensemble": len(manifest["members"]), "steps": first.get("steps"),
            **({"seconds": sum(secs)} if secs and all(is_num(s) for s in secs) else {}),
            **{k: first[k] for k in PROVENANCE if isinstance(first.get(k), str)}}


# ----------------------------------------------------------------------------- stages


def _is_stage_dir(p: Path) -> bool:
    return p.is_dir() and (any((p / f).exists() for f in ("metrics.jsonl", "comparisons.jsonl", "config.yaml"))
                           or (p / "final" / "run_complete.json").exists())


def _order(name: str) -> tuple:
    parts = name.split("/")
    leaf = parts[-1]
    rank = next((i for i, s in enumerate(STAGE_ORDER) if leaf == s or leaf.startswith(s + "_") or leaf.startswith(s + "-")),
                len(STAGE_ORDER))
    return (tuple(parts[:-1]), rank, leaf)


def discover(run_dir: Path) -> list[Stage]:
    """The stages of a run folder: itself when it holds metrics.jsonl, else its stage sub-folders."""
    run_dir = Path(run_dir)
    if (run_dir / "metrics.jsonl").is_file():
        found = [run_dir]
    else:
        found = []
        for child in sorted(run_dir.iterdir()) if run_dir.is_dir() else []:
            if child.name in SKIP_DIRS or child.name.startswith("."):
                continue
            if _is_stage_dir(child):
                found.append(child)
            elif child.is_dir():
                found += [g for g in sorted(child.iterdir())
                          if g.name not in SKIP_DIRS and not g.name.startswith(".") and _is_stage_dir(g)]
    run_alarms = [a.to_json() for a in read_alarms(run_dir / "alarms.jsonl")]
    stages = [_read_stage(path, "." if path == run_dir else path.relative_to(run_dir).as_posix(),
                          run_alarms if path != run_dir else [])  # a single-stage run: the same file
              for path in found]
    return sorted(stages, key=lambda s: _order(s.label))


def _read_stage(path: Path, name: str, run_alarms: list[dict]) -> Stage:
    rows = current_rows(_read_rows(path / "metrics.jsonl"))
    complete = _completion(path)
    kind = rows[-1]["stage"] if rows and rows[-1].get("stage") else (complete or {}).get("stage") or path.name
    config = _read_config(path / "config.yaml")
    monitor, configured = _monitor_config(config)
    st = Stage(name, path, kind, rows, complete, config, monitor, configured)
    members = sorted((path / "members").glob("*/metrics.jsonl")) if (path / "members").is_dir() else []
    st.members = {m.parent.name: r for m in members if (r := current_rows(_read_rows(m)))}
    member_kinds = [r.get("stage") for rows_ in st.members.values() for r in rows_ if r.get("stage")]
    if member_kinds:  # an ensemble folder's own rows are only the ensemble's summary
        st.kind = max(set(member_kinds), key=member_kinds.count)
    if (path / "comparisons.jsonl").is_file():
        st.kind = "compare" if not rows else st.kind
        st.comparisons = len(read_jsonl(path / "comparisons.jsonl", torn_tail="skip"))
    _attach_alarms(st, run_alarms)
    st.rm_eval = rm_eval(path)
    st.best = best_step(st)
    # Trailing means over ~a tenth of the run (2..10 steps): enough to see a peak through one
    # step's sampling noise, short enough to place it.
    st.overopt = overoptimisation(st.rows, window=max(2, min(10, len(st.rows) // 10)))
    return st


def _attach_alarms(st: Stage, run_alarms: list[dict]) -> None:
    own = st.path / "alarms.jsonl"
    mine = [a for a in run_alarms if a.get("stage") in (st.kind, st.name)]
    if own.exists() or mine:
        st.alarms = [a.to_json() for a in read_alarms(own)] + mine
        return
    if st.rows:  # no monitor ran: what it would have said, with the stage's own monitor config if any
        st.alarms, st.alarms_source = [a.to_json() for a in scan(st.rows, st.monitor)], "scan"


def best_step(st: Stage) -> Best | None:
    """The monitor's record in run_complete.json when there is one, else the keep-best rule
    (`alarms.best_score`, first best kept on ties) replayed over the stage's rows."""
    done = st.complete or {}
    if is_num(done.get("best_step")) and isinstance(done.get("best_metric"), str):
        mode = st.monitor.best_mode  # run_complete.json does not record it; the run's config does
        value = done.get("best_value") if is_num(done.get("best_value")) else None
        return Best(int(done["best_step"]), done["best_metric"], mode, value, "run_complete.json")
    cfg = st.monitor
    scores = [(r["step"], s) for r in st.curve_rows if is_num(r.get("step")) and (s := best_score(r, cfg)) is not None]
    if len(scores) < 2:
        return None
    pick = max if cfg.best_mode == "max" else min
    step, value = pick(scores, key=lambda p: p[1])
    return Best(int(step), cfg.best_metric, cfg.best_mode, value, "metrics.jsonl")


def rm_eval(path: Path) -> dict[str, dict] | None:
    """{model name: eval dict}: one entry for a single RM, members + aggregations for an ensemble."""
    for p in (path / "reward_eval.json", path / "final" / "eval.json"):
        data = _read_json(p)
        if isinstance(data, dict) and data:
            if "eval/accuracy" in data:
                return {"reward model": data}
            return {k: v for k, v in data.items() if isinstance(v, dict)}
    return None


# ----------------------------------------------------------------------------- run-level files


def frontier_points(data: Any, stages: list[Stage], summary: dict | None) -> tuple[list[dict], str]:
    """Plottable (KL, gold) points and where they come from: frontier.json's points with a gold
    score, else the models in summary.json and each stage's path during training."""
    listed = [p for p in data if isinstance(p, dict)] if isinstance(data, list) else []
    pts = [p for p in listed if is_num(p.get("kl")) and is_num(p.get("gold"))]
    if pts:
        return pts, "frontier.json"
    for name, m in (summary or {}).items():
        kl = m.get("kl/mean", 0.0 if name in ("base", "sft") else None)
        if is_num(m.get("gold/mean")) and is_num(kl):
            pts.append({"method": "models", "kl": kl, "gold": m["gold/mean"], "label": name})
    for st in stages:
        # A stage's path through (KL, gold) during training, as up to 8 means of consecutive rows.
        both = [r for r in st.rows if is_num(r.get("kl/mean")) and is_num(r.get("gold/mean"))]
        n = min(8, len(both))
        for i in range(n):
            chunk = both[i * len(both) // n : (i + 1) * len(both) // n]
            pts.append({"method": st.label, "kl": sum(r["kl/mean"] for r in chunk) / len(chunk),
                        "gold": sum(r["gold/mean"] for r in chunk) / len(chunk),
                        "label": f"step {chunk[-1]['step']}" if i == n - 1 else ""})
    if pts:
        return pts, ("each stage's path during training (means of consecutive logged rows)"
                     + (" and the models in summary.json" if summary else ""))
    if listed:
        return [], "frontier.json has no point with a gold score (no gold judge in this run), and no stage logs both kl/mean and gold/mean"
    return [], "needs frontier.json, or stages that log both kl/mean and gold/mean"


def sample_rows(data: Any) -> list[dict] | None:
    if isinstance(data, dict):
        data = data.get("rows")
    return [r for r in data if isinstance(r, dict) and "prompt" in r] if isinstance(data, list) else None


def last_logged(rows: list[dict], key: str) -> Any:
    """The last finite value of `key` in `rows`; None when no row has one."""
    return next((r[key] for r in reversed(rows) if is_num(r.get(key))), None)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
