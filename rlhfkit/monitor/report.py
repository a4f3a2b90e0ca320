"""`rlhfkit report RUN_DIR`: one self-contained HTML page (PNG plots embedded as base64) for a run.

It reads whatever the run folder holds and says "not available" for the rest, so it works on a
single recipe's run folder, on a pipeline folder, and on a run that is still going.

Layout read (every file optional):

    RUN/metrics.jsonl               a single-stage run: that stage's rows
    RUN/<stage>/metrics.jsonl       a pipeline: one run folder per stage (sft/, reward/, ppo/, dpo/,
                                    also one level deeper, e.g. round-1/ppo/); order: sft, compare,
                                    reward, ppo, dpo, then others by name
    <stage>/final/run_complete.json the stage is complete: {"stage", "seconds", "steps", ...}
    <stage>/members/*/metrics.jsonl reward-model ensemble members (curves per member)
    <stage>/comparisons.jsonl       a compare stage: the comparisons collected
    <stage>/alarms.jsonl            alarms logged during training (`monitor.alarms.Alarm.to_json()`
    RUN/alarms.jsonl                  per line); a stage without an alarms file (no monitor ran) is
                                    scanned at report time with the stage's `monitor:` config
                                    section, or the defaults
    <stage>/reward_eval.json        held-out reward-model evaluation, as the reward recipe writes it:
      (or <stage>/final/eval.json)  {"eval/accuracy", "eval/margin", "eval/ece", "eval/pairs",
                                    "calibration": [{"bin": [lo, hi], "count", "confidence",
                                    "accuracy"}], "gold/agreement"?, "gold/of_ceiling"?}; for an
                                    ensemble {"member-0": {...}, ..., "mean": {...}, "min", "uwo"}
    RUN/summary.json                evaluations of each model in pipeline order:
                                    {"base": {"gold/mean": .., "eval/perplexity": .., ...}, "sft": {..}}
    RUN/frontier.json               [{"method": "ppo", "kl": 4.1, "gold": 0.62, "label": "β=0.05"}, ...];
                                    without it the last rows of each stage with kl/mean and gold/mean
    RUN/samples.json                responses to the same prompts before and after alignment:
                                    [{"prompt": str, "responses": {"sft": str, "ppo": str},
                                      "gold": {"sft": 0.3, "ppo": 0.8}}, ...]  (or {"rows": [...]})

Output: RUN/report.html (and the same PNGs under RUN/report_plots/ for reuse in slides or docs).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfkit.data.jsonl import read_jsonl
from rlhfkit.monitor import plots
from rlhfkit.monitor.alarms import MonitorConfig, best_score, read_alarms, scan

STAGE_ORDER = ["sft", "compare", "reward", "ppo", "dpo"]
SKIP_DIRS = {"checkpoints", "final", "members", "report_plots"}
# Metrics shown (last value) in the stage table and the model table, in this order.
HEADLINE = ["gold/mean", "reward/mean", "kl/mean", "response/length", "eval/perplexity", "eval/accuracy",
            "rewards/accuracy", "loss/sft", "loss/reward", "loss/dpo", "loss/policy"]
MODEL_COLS = ["gold/mean", "kl/mean", "eval/perplexity", "response/length", "response/eos_rate", "reward/mean"]
# What held-out numbers were measured on, as recipes record it (run_complete.json, summary.json).
PROVENANCE = ["gold/judge", "eval/prompts_on", "eval/perplexity_on", "normalize/prompts_on", "reward/source"]


@dataclass
class Stage:
    name: str  # path relative to the run folder ("." for a single-stage run)
    path: Path
    kind: str  # the `stage` field of its rows (sft, reward, ppo, dpo, ...) or the folder name
    rows: list[dict]
    complete: dict | None
    members: dict[str, list[dict]] = field(default_factory=dict)
    alarms: list[dict] = field(default_factory=list)
    alarms_source: str = "logged"  # or "scan" (computed at report time)
    comparisons: int | None = None

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


# ----------------------------------------------------------------------------- reading


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = read_jsonl(path, torn_tail="skip")  # a crashed run may leave a torn last line
    return [_numbers(r) for r in rows if isinstance(r, dict)]


def _numbers(row: dict) -> dict:
    """metrics.jsonl keeps NaN/inf as strings; turn them back into floats."""
    return {k: (float(v) if v in ("nan", "inf", "-inf") else v) for k, v in row.items()}


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
    stages = []
    for path in found:
        name = "." if path == run_dir else path.relative_to(run_dir).as_posix()
        rows = _read_rows(path / "metrics.jsonl")
        kinds = [r.get("stage") for r in rows if r.get("stage")]
        kind = max(set(kinds), key=kinds.count) if kinds else path.name
        st = Stage(name, path, kind, rows, _read_json(path / "final" / "run_complete.json"))
        members = sorted((path / "members").glob("*/metrics.jsonl")) if (path / "members").is_dir() else []
        st.members = {m.parent.name: _read_rows(m) for m in members}
        member_kinds = [r.get("stage") for rows_ in st.members.values() for r in rows_ if r.get("stage")]
        if member_kinds:  # an ensemble folder's own rows are only the ensemble's summary
            st.kind = max(set(member_kinds), key=member_kinds.count)
        if (path / "comparisons.jsonl").is_file():
            st.kind = "compare" if not rows else st.kind
            st.comparisons = len(read_jsonl(path / "comparisons.jsonl", torn_tail="skip"))
        _attach_alarms(st, run_alarms if path != run_dir else [])  # a single-stage run: the same file
        stages.append(st)
    return sorted(stages, key=lambda s: _order(s.label))


def _attach_alarms(st: Stage, run_alarms: list[dict]) -> None:
    own = st.path / "alarms.jsonl"
    mine = [a for a in run_alarms if a.get("stage") in (st.kind, st.name)]
    if own.exists() or mine:
        st.alarms = [a.to_json() for a in read_alarms(own)] + mine
        return
    if st.rows:  # no monitor ran: what it would have said, with the stage's own monitor config if any
        st.alarms, st.alarms_source = [a.to_json() for a in scan(st.rows, _monitor_config(st.path))], "scan"


def _monitor_config(path: Path) -> MonitorConfig:
    try:
        import yaml

        from rlhfkit.config import build

        section = (yaml.safe_load((path / "config.yaml").read_text()) or {}).get("monitor")
        return build(MonitorConfig, section) if isinstance(section, dict) else MonitorConfig()
    except Exception:  # a config from another version: the defaults are a fine reading
        return MonitorConfig()


def rm_eval(st: Stage) -> dict[str, dict] | None:
    """{model name: eval dict}: one entry for a single RM, members + aggregations for an ensemble."""
    for p in (st.path / "reward_eval.json", st.path / "final" / "eval.json"):
        data = _read_json(p)
        if isinstance(data, dict) and data:
            if "eval/accuracy" in data:
                return {"reward model": data}
            return {k: v for k, v in data.items() if isinstance(v, dict)}
    return None


def frontier_points(run_dir: Path, stages: list[Stage], summary: dict | None) -> tuple[list[dict], str]:
    data = _read_json(run_dir / "frontier.json")
    if isinstance(data, list) and data:
        return data, "frontier.json"
    pts = []
    for name, m in (summary or {}).items():
        if isinstance(m, dict) and _num(m.get("gold/mean")):
            kl = m.get("kl/mean", 0.0 if name in ("base", "sft") else None)
            if _num(kl):
                pts.append({"method": "models", "kl": kl, "gold": m["gold/mean"], "label": name})
    for st in stages:
        # A stage's path through (KL, gold) during training, as up to 8 means of consecutive rows.
        both = [r for r in st.rows if _num(r.get("kl/mean")) and _num(r.get("gold/mean"))]
        n = min(8, len(both))
        for i in range(n):
            chunk = both[i * len(both) // n : (i + 1) * len(both) // n]
            pts.append({"method": st.label, "kl": sum(r["kl/mean"] for r in chunk) / len(chunk),
                        "gold": sum(r["gold/mean"] for r in chunk) / len(chunk),
                        "label": f"step {chunk[-1]['step']}" if i == n - 1 else ""})
    return pts, ("each stage's path during training (means of consecutive logged rows)"
                 + (" and the models in summary.json" if summary else ""))


def sample_rows(run_dir: Path) -> list[dict] | None:
    data = _read_json(run_dir / "samples.json")
    if isinstance(data, dict):
        data = data.get("rows")
    return [r for r in data if isinstance(r, dict) and "prompt" in r] if isinstance(data, list) else None


# ----------------------------------------------------------------------------- html pieces


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v: Any) -> str:
    if v is None:
        return '<span class="muted">—</span>'
    if isinstance(v, bool):
        return html.escape(str(v))
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return html.escape(str(v))


def _img(png: bytes | None, alt: str, plots_dir: Path | None, stem: str, why: str) -> str:
    if png is None:
        return _na(f"{alt}: {why}")
    if plots_dir is not None:
        plots_dir.mkdir(parents=True, exist_ok=True)
        (plots_dir / f"{stem}.png").write_bytes(png)
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _na(text: str) -> str:
    return f'<div class="na"><b>not available</b> — {html.escape(text)}</div>'


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _last(rows: list[dict], key: str) -> Any:
    for r in reversed(rows):
        if _num(r.get(key)):
            return r[key]
    return None


def _evidence(ev: dict) -> str:
    parts = []
    for k, v in ev.items():
        if isinstance(v, list):
            v = "[" + ", ".join(_fmt(x) for x in v) + "]"
        else:
            v = _fmt(v)
        parts.append(f"<span class=k>{html.escape(k)}</span>={v}")
    return '<div class="ev">' + " &nbsp;".join(parts) + "</div>"


CSS = """
:root { --ink:#111827; --muted:#6b7280; --line:#e5e7eb; --bg:#f8fafc; --red:#dc2626; --green:#16a34a; --blue:#2563eb; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color:var(--ink); background:var(--bg); }
header { background:#0f172a; color:#f8fafc; padding:22px 32px 18px; }
header h1 { margin:0 0 4px; font-size:22px; font-weight:650; }
header .meta { color:#cbd5e1; font-size:12.5px; }
main { max-width:1320px; margin:0 auto; padding:18px 32px 48px; }
section { background:white; border:1px solid var(--line); border-radius:10px; padding:16px 20px; margin:16px 0; }
h2 { margin:0 0 12px; font-size:17px; }
h3 { margin:16px 0 8px; font-size:14.5px; }
.cards { display:flex; flex-wrap:wrap; gap:12px; margin-top:14px; }
.card { background:#1e293b; border-radius:8px; padding:10px 14px; min-width:150px; }
.card .v { font-size:20px; font-weight:650; color:white; }
.card .l { font-size:11.5px; color:#94a3b8; text-transform:uppercase; letter-spacing:.04em; }
.card.bad .v { color:#fca5a5; } .card.good .v { color:#86efac; }
.chips { margin-top:10px; display:flex; flex-wrap:wrap; gap:6px; }
.chip { font-size:12px; border-radius:999px; padding:2px 10px; background:#334155; color:#e2e8f0; }
.chip.done { background:#14532d; color:#bbf7d0; } .chip.run { background:#713f12; color:#fef08a; }
table { border-collapse:collapse; width:100%; font-size:13px; margin:6px 0 4px; }
th { text-align:left; font-weight:600; color:#374151; background:#f1f5f9; border-bottom:1px solid var(--line); padding:6px 9px; }
td { border-bottom:1px solid var(--line); padding:6px 9px; vertical-align:top; }
td.n, th.n { text-align:right; font-variant-numeric: tabular-nums; }
tr:hover td { background:#fafafa; }
table.samples td { width:auto; white-space:pre-wrap; word-break:break-word; }
table.samples td:first-child { color:#374151; background:#f8fafc; width:22%; }
.score { display:inline-block; font-size:11px; border-radius:4px; padding:0 6px; margin-left:6px; background:#e0e7ff; color:#3730a3; }
.grid { display:grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap:14px; }
img { max-width:100%; height:auto; display:block; border-radius:6px; }
.na { color:var(--muted); background:#f9fafb; border:1px dashed #d1d5db; border-radius:6px; padding:10px 12px; margin:6px 0; }
.alarm td:nth-child(3) { color:var(--red); font-weight:600; }
.ev { font:11.5px/1.5 ui-monospace, SFMono-Regular, Menlo, monospace; color:#374151; margin-top:4px; }
.ev .k { color:var(--muted); }
.note { color:var(--muted); font-size:12.5px; margin:4px 0 8px; }
.ok { color:var(--green); font-weight:600; }
.muted { color:#cbd5e1; }
"""


# ----------------------------------------------------------------------------- sections


def _header(run_dir: Path, stages: list[Stage], summary: dict | None, alarms: list[dict]) -> str:
    chips = []
    for st in stages:
        steps = _last(st.curve_rows, "step") or (st.complete or {}).get("steps")
        if st.complete:
            secs = st.complete.get("seconds")
            chips.append(f'<span class="chip done">✓ {html.escape(st.label)}'
                         f'{f" · {steps} steps" if steps else ""}{f" · {secs:.0f}s" if _num(secs) else ""}</span>')
        elif st.kind == "compare" and st.comparisons:
            chips.append(f'<span class="chip done">✓ {html.escape(st.label)} · {st.comparisons} comparisons</span>')
        else:
            chips.append(f'<span class="chip run">… {html.escape(st.label)}'
                         f'{f" · step {steps}" if steps else ""}</span>')
    cards = []
    golds = [(n, m["gold/mean"]) for n, m in (summary or {}).items() if isinstance(m, dict) and _num(m.get("gold/mean"))]
    if golds:
        path = " → ".join(f"{html.escape(n)} {v:.3g}" for n, v in golds)
        up = golds[-1][1] > golds[0][1]
        cards.append(f'<div class="card {"good" if up else "bad"}"><div class="l">gold score</div><div class="v">{path}</div></div>')
    else:
        for st in stages:
            g = _last(st.rows, "gold/mean")
            if g is not None:
                cards.append(f'<div class="card"><div class="l">gold · {html.escape(st.label)}</div><div class="v">{g:.3g}</div></div>')
    cards.append(f'<div class="card {"bad" if alarms else "good"}"><div class="l">alarms</div>'
                 f'<div class="v">{len(alarms) if alarms else "none"}</div></div>')
    secs = sum(st.complete.get("seconds", 0) for st in stages if st.complete and _num(st.complete.get("seconds")))
    if secs:
        cards.append(f'<div class="card"><div class="l">training time</div><div class="v">{secs / 60:.1f} min</div></div>')
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (f"<header><h1>rlhfkit report — {html.escape(run_dir.resolve().name)}</h1>"
            f'<div class="meta">{html.escape(str(run_dir.resolve()))} · generated {when} · '
            f'{len(stages)} stage{"s" if len(stages) != 1 else ""}</div>'
            f'<div class="chips">{"".join(chips)}</div><div class="cards">{"".join(cards)}</div></header>')


def _summary_section(summary: dict | None, stages: list[Stage], plots_dir: Path | None) -> str:
    out = ["<section><h2>Results</h2>"]
    if summary:
        cols = [c for c in MODEL_COLS if any(isinstance(m, dict) and _num(m.get(c)) for m in summary.values())]
        rows = [[f"<b>{html.escape(n)}</b>"] + [_fmt(m.get(c)) if isinstance(m, dict) else "" for c in cols]
                for n, m in summary.items()]
        out.append('<div class="grid"><div>')
        out.append(_table(["model"] + [f'<span class="n">{c}</span>' for c in cols], rows))
        on = _measured_on(next((m for m in summary.values() if isinstance(m, dict)), None))
        out.append('<p class="note">Held-out evaluation of each model in pipeline order (summary.json)'
                   + (f". Measured on: {on}" if on else "") + ".</p></div><div>")
        out.append(_img(plots.model_bars(summary), "gold by model", plots_dir, "gold_by_model",
                        "no model in summary.json has gold/mean"))
        out.append("</div></div>")
    else:
        out.append(_na("summary.json (held-out evaluation of each model: base, SFT, PPO/DPO) is not in this run folder"))
    if stages:
        cols = [c for c in HEADLINE if any(_last(st.curve_rows, c) is not None for st in stages)][:8]
        on = {st.name: _measured_on(st.complete) for st in stages}
        rows = []
        for st in stages:
            status = ('<span class="ok">complete</span>' if st.complete else
                      f"{st.comparisons} comparisons" if st.comparisons else "in progress")
            secs = (st.complete or {}).get("seconds")
            rows.append([f"<b>{html.escape(st.label)}</b>", html.escape(st.kind), status,
                         _fmt(_last(st.curve_rows, "step")), _fmt(secs) if _num(secs) else _fmt(None)]
                        + [_fmt(_last(st.curve_rows, c)) for c in cols] + ([on[st.name]] if any(on.values()) else []))
        out.append("<h3>Stages (last logged value of each metric)</h3>")
        out.append(_table(["stage", "kind", "status", "steps", "seconds"] + cols
                          + (["measured on"] if any(on.values()) else []), rows))
    return "".join(out) + "</section>"


def _measured_on(entries: dict | None) -> str:
    """A model's or stage's provenance entries as escaped text, e.g. "gold/judge: lab:gold"."""
    return html.escape(" · ".join(f"{k}: {entries[k]}" for k in PROVENANCE if isinstance((entries or {}).get(k), str)))


def _alarms_section(stages: list[Stage]) -> str:
    out = ["<section><h2>Reward-hacking alarms</h2>"]
    rows = []
    for st in stages:
        for a in st.alarms:
            src = "" if st.alarms_source == "logged" else " <i>(report-time scan)</i>"
            rows.append([html.escape(st.label), _fmt(a.get("step")),
                         html.escape(a.get("name", "")) + src, html.escape(a.get("action", "")),
                         html.escape(a.get("message", "")) + _evidence(a.get("evidence", {}))])
    if rows:
        out.append(_table(["stage", "step", "alarm", "action", "message and evidence"], rows, "alarm"))
    elif any(st.rows for st in stages):
        out.append('<p class="ok">No alarm fired: proxy and gold agree, KL, length, perplexity and ensemble '
                   "disagreement stayed within their bounds.</p>")
    else:
        out.append(_na("no stage has logged metrics yet"))
    scanned = [st.label for st in stages if st.alarms_source == "scan"]
    if scanned:
        out.append(f'<p class="note">No monitor ran in {", ".join(map(html.escape, scanned))}: '
                   "alarms there were computed now from metrics.jsonl with the monitor's settings.</p>")
    return "".join(out) + "</section>"


def _curves_section(stages: list[Stage], plots_dir: Path | None) -> str:
    out = ['<section><h2>Training curves</h2><p class="note">Faint lines: every logged step; bold: smoothed. '
           'Red dashed: alarms. Green dotted: best step by gold.</p>']
    if not stages:
        out.append(_na("no stage folders with metrics.jsonl"))
    for st in stages:
        label = st.label
        rows = st.curve_rows
        if rows is not st.rows:
            label = f"{label} · {next(iter(st.members))} of {len(st.members)}"
        scores = [(r["step"], s) for r in rows if (s := best_score(r, MonitorConfig())) is not None]
        best = max(scores, key=lambda p: p[1])[0] if len(scores) > 1 else None
        out.append(f"<h3>{html.escape(label)} <span class=note>({html.escape(st.kind)})</span></h3>")
        if st.kind == "compare" and not st.rows:
            out.append(f'<p class="note">{st.comparisons or 0} comparisons collected (no training curves).</p>')
            continue
        why = "no metrics.jsonl rows with plottable metrics"
        out.append(_img(plots.stage_curves(rows, st.alarms, best), f"{label} curves", plots_dir,
                        f"curves_{label.replace('/', '_')}", why))
    return "".join(out) + "</section>"


def _reward_section(stages: list[Stage], plots_dir: Path | None) -> str:
    out = ["<section><h2>Reward model</h2>"]
    rm = [st for st in stages if st.kind in ("reward", "reward_ensemble")]
    if not rm:
        return "".join(out) + _na("no reward stage in this run") + "</section>"
    for st in rm:
        out.append(f"<h3>{html.escape(st.label)}</h3>")
        runs = st.members or {"reward model": st.rows}
        ev = rm_eval(st)
        bins = None
        if ev:
            main = ev.get("mean") or ev.get("reward model") or next(iter(ev.values()))
            bins = main.get("calibration")
        out.append('<div class="grid"><div>')
        out.append(_img(plots.rm_accuracy(runs), "RM accuracy", plots_dir, f"rm_accuracy_{st.label.replace('/', '_')}",
                        "no reward/accuracy or eval/accuracy rows"))
        out.append("</div><div>")
        out.append(_img(plots.calibration(bins or []), "RM calibration", plots_dir,
                        f"rm_calibration_{st.label.replace('/', '_')}",
                        "no calibration bins in reward_eval.json"))
        out.append("</div></div>")
        if ev:
            cols = [("eval/accuracy", "accuracy"), ("eval/margin", "margin"), ("eval/ece", "ECE"),
                    ("eval/pairs", "pairs"), ("gold/agreement", "gold agreement"),
                    ("gold/annotator_agreement", "annotators vs gold"), ("gold/of_ceiling", "of ceiling")]
            cols = [(k, t) for k, t in cols if any(k in m for m in ev.values())]
            out.append(_table(["model"] + [t for _, t in cols],
                              [[html.escape(n)] + [_fmt(m.get(k)) for k, _ in cols] for n, m in ev.items()]))
            out.append('<p class="note">Held-out pairs (reward_eval.json). ECE: expected calibration error of '
                       "σ(r_w − r_l) as the probability that the labelled winner wins.</p>")
        else:
            out.append(_na("held-out evaluation (reward_eval.json) not found"))
    return "".join(out) + "</section>"


def _frontier_section(run_dir: Path, stages: list[Stage], summary: dict | None, plots_dir: Path | None) -> str:
    pts, source = frontier_points(run_dir, stages, summary)
    out = ["<section><h2>Reward–KL frontier and over-optimisation</h2>", '<div class="grid"><div>']
    out.append(_img(plots.frontier(pts), "frontier", plots_dir, "frontier",
                    "needs frontier.json, or stages that log both kl/mean and gold/mean"))
    if pts:
        out.append(f'<p class="note">Gold score against KL to the reference ({html.escape(source)}). '
                   "Up and to the left is better: more gold for less drift.</p>")
    out.append("</div><div>")
    rl = [st for st in stages if any(_num(r.get("gold/mean")) and _num(r.get("reward/mean")) for r in st.rows)]
    if not rl:
        out.append(_na("proxy vs gold needs a stage that logs both reward/mean and gold/mean (PPO on the lab)"))
    for st in rl:
        label = st.label
        out.append(f"<h3>{html.escape(label)}</h3>")
        out.append(_img(plots.proxy_vs_gold(st.rows, st.alarms), f"proxy vs gold {label}", plots_dir,
                        f"proxy_gold_{label.replace('/', '_')}", "fewer than 2 rows with both metrics"))
    out.append("</div></div>")
    return "".join(out) + "</section>"


def _samples_section(run_dir: Path) -> str:
    out = ["<section><h2>Example responses: the same prompts before and after alignment</h2>"]
    rows = sample_rows(run_dir)
    if not rows:
        return "".join(out) + _na("samples.json (prompts with each model's response) is not in this run folder") + "</section>"
    models = list(dict.fromkeys(m for r in rows for m in (r.get("responses") or {})))
    body = []
    for r in rows:
        cells = [html.escape(str(r["prompt"]))]
        for m in models:
            text = (r.get("responses") or {}).get(m)
            g = (r.get("gold") or {}).get(m)
            badge = f'<span class="score">gold {g:.2f}</span>' if _num(g) else ""
            cells.append((html.escape(text) if isinstance(text, str) else "—") + badge)
        body.append(cells)
    out.append(_table(["prompt"] + [html.escape(m) for m in models], body, "samples"))
    return "".join(out) + "</section>"


def _guard(fn, *args) -> str:
    """One broken input must not cost the whole report: say what failed where the section would be."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - reported in the page, the rest still renders
        return f"<section>{_na(f'this section could not be drawn: {type(e).__name__}: {e}')}</section>"


def write_report(run_dir: str | Path, out: str | Path | None = None, save_plots: bool = True) -> Path:
    """Write the report of a run (or pipeline) folder; returns the HTML path (default RUN/report.html)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    out = Path(out) if out else run_dir / "report.html"
    plots_dir = out.parent / "report_plots" if save_plots else None
    stages = discover(run_dir)
    try:
        summary = _read_json(run_dir / "summary.json")
    except json.JSONDecodeError:
        summary = None
    summary = summary if isinstance(summary, dict) else None
    alarms = [a for st in stages for a in st.alarms]
    body = [
        _guard(_header, run_dir, stages, summary, alarms),
        "<main>",
        _guard(_summary_section, summary, stages, plots_dir),
        _guard(_alarms_section, stages),
        _guard(_curves_section, stages, plots_dir),
        _guard(_reward_section, stages, plots_dir),
        _guard(_frontier_section, run_dir, stages, summary, plots_dir),
        _guard(_samples_section, run_dir),
        "</main>",
    ]
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>rlhfkit report — {html.escape(run_dir.resolve().name)}</title><style>{CSS}</style></head>"
            f"<body>{''.join(body)}</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
