"""The report page drawn from a run's data (`run_data.RunData`): HTML sections and the PNGs they
embed. Nothing here reads a file of the run; `report.write_report` reads and writes."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable
from importlib import resources
from typing import Any

from rlhfkit.monitor import plots
from rlhfkit.monitor.measured import coverage, stage_value_on, value_on
from rlhfkit.monitor.run_data import PROVENANCE, RunData, Stage, is_num, last_logged

# Metrics shown (last value) in the stage table and the model table, in this order.
HEADLINE = ["gold/mean", "reward/mean", "kl/mean", "response/length", "eval/perplexity", "eval/accuracy",
            "rewards/accuracy", "loss/sft", "loss/reward", "loss/dpo", "loss/kto", "loss/orpo", "loss/policy"]
MODEL_COLS = ["gold/mean", "kl/mean", "eval/perplexity", "response/length", "response/eos_rate", "reward/mean"]
NOT_MEASURED = '<span class="unmeasured">not measured</span>'


class Figures:
    """The PNGs drawn for the page, by file stem: embedded as base64, and kept for the caller to save."""

    def __init__(self) -> None:
        self.pngs: dict[str, bytes] = {}

    def img(self, png: bytes | None, alt: str, stem: str, why: str) -> str:
        if png is None:
            return na(f"{alt}: {why}")
        self.pngs[stem] = png
        data = base64.b64encode(png).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def render(run: RunData, figs: Figures, when: str) -> str:
    """The whole page; `when` is the generation time shown in the header."""
    alarms = [a for st in run.stages for a in st.alarms]
    body = [
        _guard(_header, run, alarms, when),
        "<main>",
        _guard(_results_section, run, figs),
        _guard(_findings_section, run.stages, figs),
        _guard(_alarms_section, run.stages),
        _guard(_curves_section, run.stages, figs),
        _guard(_reward_section, run.stages, figs),
        _guard(_frontier_section, run, figs),
        _guard(_samples_section, run.samples),
        "</main>",
    ]
    css = resources.files("rlhfkit.monitor").joinpath("static", "report.css").read_text(encoding="utf-8")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>rlhfkit report — {html.escape(run.title)}</title><style>{css}</style></head>"
            f"<body>{''.join(body)}</body></html>")


def _guard(fn: Callable[..., str], *args: Any) -> str:
    """One broken input must not cost the whole report: say what failed where the section would be."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - reported in the page, the rest still renders
        return f"<section>{na(f'this section could not be drawn: {type(e).__name__}: {e}')}</section>"


# ----------------------------------------------------------------------------- small pieces


def fmt(v: Any) -> str:
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


def na(text: str) -> str:
    return f'<div class="na"><b>not available</b> — {html.escape(text)}</div>'


def table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _on(text: str | None) -> str:
    return f'<div class="on">{html.escape(text) if text else "measured on: not recorded"}</div>'


def _measured_columns(cols: list[str], values: list[dict[str, Any]], ons: list[dict[str, str | None]]
                     ) -> tuple[list[str], list[list[str]], str]:
    """Metric columns that say what each value was measured on: in the header when every value of
    the column was measured on the same thing, else under each value (and a note says so). A
    missing value reads "not measured". Returns (headers, cells per row, the note or "")."""
    headers, cells, differ = [], [[] for _ in values], []
    for c in cols:
        seen = list(dict.fromkeys(on[c] for v, on in zip(values, ons, strict=True) if v.get(c) is not None))
        same = len(seen) <= 1
        headers.append(f"{html.escape(c)}" + (_on(seen[0] if seen else None) if same else '<div class="on">differs by row</div>'))
        if not same:
            differ.append(html.escape(c))
        for row, v, on in zip(cells, values, ons, strict=True):
            x = v.get(c)
            row.append(NOT_MEASURED if x is None else fmt(x) + ("" if same else _on(on[c])))
    note = (f'<p class="note">Measured on different texts or prompts in different rows (each value says which): '
            f'{", ".join(differ)}.</p>') if differ else ""
    return headers, cells, note


def _evidence(ev: dict) -> str:
    parts = []
    for k, v in ev.items():
        v = "[" + ", ".join(fmt(x) for x in v) + "]" if isinstance(v, list) else fmt(v)
        parts.append(f"<span class=k>{html.escape(k)}</span>={v}")
    return '<div class="ev">' + " &nbsp;".join(parts) + "</div>"


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _stem(label: str) -> str:
    return label.replace("/", "_")


# ----------------------------------------------------------------------------- sections


def _steps(st: Stage) -> Any:
    return last_logged(st.curve_rows, "step") if st.curve_rows else (st.complete or {}).get("steps")


def _header(run: RunData, alarms: list[dict], when: str) -> str:
    chips = []
    for st in run.stages:
        label, steps, status = html.escape(st.label), _steps(st), st.status
        if status == "complete":
            secs = st.complete.get("seconds")
            chips.append(f'<span class="chip done">✓ {label}{f" · {steps} steps" if steps is not None else ""}'
                         f'{f" · {secs:.0f}s" if is_num(secs) else ""}</span>')
        elif status == "collected":
            chips.append(f'<span class="chip done">✓ {label} · {st.comparisons} comparisons</span>')
        elif status == "in progress":
            chips.append(f'<span class="chip run">… {label}{f" · step {steps}" if steps is not None else ""}</span>')
        else:
            chips.append(f'<span class="chip">○ {label} · not started</span>')
    cards = []
    golds = [(n, m["gold/mean"]) for n, m in (run.summary or {}).items() if is_num(m.get("gold/mean"))]
    if golds:
        path = " → ".join(f"{html.escape(n)} {v:.3g}" for n, v in golds)
        up = golds[-1][1] > golds[0][1]
        cards.append(f'<div class="card {"good" if up else "bad"}"><div class="l">gold score</div><div class="v">{path}</div></div>')
    else:
        for st in run.stages:
            g = last_logged(st.rows, "gold/mean")
            if g is not None:
                cards.append(f'<div class="card"><div class="l">gold · {html.escape(st.label)}</div><div class="v">{g:.3g}</div></div>')
    cards.append(f'<div class="card {"bad" if alarms else "good"}"><div class="l">alarms</div>'
                 f'<div class="v">{len(alarms) if alarms else "none"}</div></div>')
    secs = sum(st.complete["seconds"] for st in run.stages if st.complete and is_num(st.complete.get("seconds")))
    if secs:
        cards.append(f'<div class="card"><div class="l">training time</div><div class="v">{secs / 60:.1f} min</div></div>')
    n = len(run.stages)
    return (f"<header><h1>rlhfkit report — {html.escape(run.title)}</h1>"
            f'<div class="meta">{html.escape(run.location)} · generated {html.escape(when)} · {n} stage{"s" if n != 1 else ""}</div>'
            f'<div class="chips">{"".join(chips)}</div><div class="cards">{"".join(cards)}</div></header>')


def _results_section(run: RunData, figs: Figures) -> str:
    out = ["<section><h2>Results</h2>"]
    summary = run.summary
    if summary:
        cols = [c for c in MODEL_COLS if any(is_num(m.get(c)) for m in summary.values())]
        values = [{c: m[c] for c in cols if is_num(m.get(c))} for m in summary.values()]
        ons = [{c: value_on(c, m) for c in cols} for m in summary.values()]
        headers, cells, note = _measured_columns(cols, values, ons)
        out.append('<div class="grid"><div class="wide">')
        out.append(table(["model"] + headers, [[f"<b>{html.escape(n)}</b>"] + r for n, r in zip(summary, cells, strict=True)]))
        provs = list(dict.fromkeys(_provenance_text(m) for m in summary.values()))
        on = provs[0] if len(provs) == 1 else "differs by model (each value says which)"
        out.append('<p class="note">Held-out evaluation of each model in pipeline order (summary.json)'
                   + (f". Measured on: {on}" if on else "") + ".</p>" + note)
        out.append("</div><div>")
        out.append(figs.img(plots.model_bars(summary), "gold by model", "gold_by_model", "no model in summary.json has gold/mean"))
        out.append("</div></div>")
    else:
        out.append(na("summary.json (held-out evaluation of each model: base, SFT, PPO/DPO) is not in this run folder"))
    if run.stages:
        stages = run.stages
        cols = [c for c in HEADLINE if any(st.last_value(c) is not None for st in stages)][:8]
        values = [{c: st.last_value(c) for c in cols} for st in stages]
        ons = [{c: stage_value_on(st, c) for c in cols} for st in stages]
        headers, cells, note = _measured_columns(cols, values, ons)
        rows = []
        for st, metric_cells in zip(stages, cells, strict=True):
            status = {"complete": '<span class="ok">complete</span>', "collected": f"{st.comparisons} comparisons"}.get(
                st.status, st.status)
            secs = (st.complete or {}).get("seconds")
            rows.append([f"<b>{html.escape(st.label)}</b>", html.escape(st.kind), status, fmt(_steps(st)),
                         fmt(secs if is_num(secs) else None)] + metric_cells)
        out.append("<h3>Stages (last logged value of each metric, else the final one in run_complete.json)</h3>")
        out.append('<div class="wide">' + table(["stage", "kind", "status", "steps", "seconds"] + headers, rows)
                   + "</div>" + note)
    return "".join(out) + "</section>"


def _provenance_text(entries: dict) -> str:
    """A model's or stage's provenance entries as escaped text, e.g. "gold/judge: lab:gold"."""
    return html.escape(" · ".join(f"{k}: {entries[k]}" for k in PROVENANCE if isinstance(entries.get(k), str)))


def _findings_section(stages: list[Stage], figs: Figures) -> str:
    """What this run shows about over-optimisation, from its own rows (`monitor.findings`)."""
    out = ["<section><h2>Findings</h2>"]
    found = [st for st in stages if st.overopt is not None]
    if not found:
        return "".join(out) + na("needs an online RL stage that logs gold/mean and kl/mean for at least 6 steps "
                                 "(a gold judge: the lab)") + "</section>"
    for st in found:
        o = st.overopt
        items = "".join(f"<li>{html.escape(t)}</li>" for t in o.statements())
        out.append(f'<h3>{html.escape(st.label)}</h3><div class="grid"><div><ul>{items}</ul><p class="note">'
                   f"Trailing means over {o.window} steps of the rollouts' gold and KL; the standard error of a fall "
                   "from the step-to-step spread. Defences measured on the lab (docs/FINDINGS.md): a KL penalty, "
                   "stopping at the best step (monitor.action keep_best), reward-model ensembles (min, uwo).</p></div><div>")
        out.append(figs.img(plots.law_fit(o.points, o.fit), f"law fit {st.label}", f"law_{_stem(st.label)}",
                            "fewer than 2 smoothed points") + "</div></div>")
    return "".join(out) + "</section>"


def _alarms_section(stages: list[Stage]) -> str:
    out = ["<section><h2>Reward-hacking alarms</h2>"]
    rows = []
    for st in stages:
        for a in st.alarms:
            src = "" if st.alarms_source == "logged" else " <i>(report-time scan)</i>"
            rows.append([html.escape(st.label), fmt(a.get("step")), html.escape(a.get("name", "")) + src,
                         html.escape(a.get("action", "")), html.escape(a.get("message", "")) + _evidence(a.get("evidence", {}))])
    watched = [(st, coverage(st)) for st in stages if st.rows]
    if rows:
        out.append(table(["stage", "step", "alarm", "action", "message and evidence"], rows, "alarm"))
    elif watched:
        out.append('<p class="ok">No alarm fired in the checks listed below.</p>')
    else:
        return "".join(out) + na("no stage has logged metrics yet") + "</section>"
    proxy_gold = [f"{html.escape(st.label)} ({html.escape(st.monitor.proxy_key)} vs {html.escape(st.monitor.gold_key)}, "
                  f"{_rows(cov.checked['proxy_gold'])})" for st, cov in watched
                  if "proxy_gold" in cov.checked]
    if proxy_gold:
        out.append(f'<p class="note">Proxy vs gold was checked in {", ".join(proxy_gold)}.</p>')
    else:
        out.append('<p class="note"><b>Proxy vs gold was not measured</b>: no stage logged both the proxy reward '
                   "and a gold judge's score, so over-optimisation of the proxy cannot be seen here.</p>")
    out.append("<h3>Alarms checked</h3><ul>")
    for st, cov in watched:
        checked = ", ".join(f"{html.escape(a)} ({_rows(n)})" for a, n in cov.checked.items()) or "nothing"
        skipped = "; ".join(f"{html.escape(a)} ({html.escape(why)})" for a, why in cov.unchecked.items())
        out.append(f"<li><b>{html.escape(st.label)}</b>, {html.escape(cov.how)}: checked {checked}"
                   + (f"; <b>not checked</b>: {skipped}" if skipped else "") + ".</li>")
    out.append("</ul>")
    scanned = [st.label for st in stages if st.alarms_source == "scan"]
    if scanned:
        out.append(f'<p class="note">No monitor ran in {", ".join(map(html.escape, scanned))}: '
                   "alarms there were computed now from metrics.jsonl with the monitor's settings.</p>")
    return "".join(out) + "</section>"


def _best_note(st: Stage) -> str:
    b = st.best
    if b is None:
        if not st.monitor_configured:
            return ""
        return f'<p class="note">No best step: {html.escape(st.monitor.best_metric)} (monitor.best_metric) is not logged here.</p>'
    value = f" = {fmt(b.value)}" if b.value is not None else ""
    where = "the monitor's record in run_complete.json" if b.source == "run_complete.json" else "recomputed from metrics.jsonl"
    return (f'<p class="note">Green dotted: best step {b.step} by {html.escape(b.metric)} ({b.mode}{value}; '
            f"monitor.best_metric, {where}).</p>")


def _curves_section(stages: list[Stage], figs: Figures) -> str:
    out = ['<section><h2>Training curves</h2><p class="note">Faint lines: every logged step; bold: smoothed. '
           "Red dashed: alarms. Green dotted: the best step by the stage's monitor.best_metric.</p>"]
    if not stages:
        out.append(na("no stage folders with metrics.jsonl"))
    for st in stages:
        label, rows = st.label, st.curve_rows
        if rows is not st.rows:
            label = f"{label} · {next(iter(st.members))} of {len(st.members)}"
        out.append(f"<h3>{html.escape(label)} <span class=note>({html.escape(st.kind)})</span></h3>")
        if st.kind == "compare" and not st.rows:
            out.append(f'<p class="note">{st.comparisons or 0} comparisons collected (no training curves).</p>')
            continue
        if not rows:
            out.append(na("not started: metrics.jsonl holds no rows of this stage yet"))
            continue
        best = st.best
        png = plots.stage_curves(rows, st.alarms, best.step if best else None,
                                 best_label=f"best by {best.metric}" if best else None)
        out.append(figs.img(png, f"{label} curves", f"curves_{_stem(label)}", "no metrics.jsonl rows with plottable metrics"))
        out.append(_best_note(st))
    return "".join(out) + "</section>"


def _reward_section(stages: list[Stage], figs: Figures) -> str:
    out = ["<section><h2>Reward model</h2>"]
    rm = [st for st in stages if st.kind in ("reward", "reward_ensemble")]
    if not rm:
        return "".join(out) + na("no reward stage in this run") + "</section>"
    for st in rm:
        out.append(f"<h3>{html.escape(st.label)}</h3>")
        ev = st.rm_eval
        main = (ev.get("mean") or ev.get("reward model") or next(iter(ev.values()))) if ev else {}
        out.append('<div class="grid"><div>')
        out.append(figs.img(plots.rm_accuracy(st.members or {"reward model": st.rows}), "RM accuracy",
                            f"rm_accuracy_{_stem(st.label)}", "no reward/accuracy or eval/accuracy rows"))
        out.append("</div><div>")
        out.append(figs.img(plots.calibration(main.get("calibration") or []), "RM calibration",
                            f"rm_calibration_{_stem(st.label)}", "no calibration bins in reward_eval.json"))
        out.append("</div></div>")
        if ev:
            cols = [("eval/accuracy", "accuracy"), ("eval/margin", "margin"), ("eval/ece", "ECE"),
                    ("eval/pairs", "pairs"), ("gold/agreement", "gold agreement"),
                    ("gold/annotator_agreement", "annotators vs gold"), ("gold/of_ceiling", "of ceiling")]
            cols = [(k, t) for k, t in cols if any(k in m for m in ev.values())]
            out.append(table(["model"] + [t for _, t in cols],
                             [[html.escape(n)] + [fmt(m.get(k)) for k, _ in cols] for n, m in ev.items()]))
            out.append('<p class="note">Held-out pairs (reward_eval.json). ECE: expected calibration error of '
                       "σ(r_w − r_l) as the probability that the labelled winner wins.</p>")
        else:
            out.append(na("held-out evaluation (reward_eval.json) not found"))
        norm = st.provenance.get("normalize/prompts_on")
        if norm:
            out.append(f'<p class="note">Scores normalised on responses to {html.escape(norm)}.</p>')
    return "".join(out) + "</section>"


def _frontier_section(run: RunData, figs: Figures) -> str:
    out = ["<section><h2>Reward–KL frontier and over-optimisation</h2>", '<div class="grid"><div>']
    png = plots.frontier(run.frontier)
    out.append(figs.img(png, "frontier", "frontier", run.frontier_source))
    if png is not None:  # a caption only under a plot that was drawn
        out.append(f'<p class="note">Gold score against KL to the reference ({html.escape(run.frontier_source)}). '
                   "Up and to the left is better: more gold for less drift.</p>")
    out.append("</div><div>")
    rl = [st for st in run.stages if any(is_num(r.get("gold/mean")) and is_num(r.get("reward/mean")) for r in st.rows)]
    if not rl:
        out.append(na("proxy vs gold needs a stage that logs both reward/mean and gold/mean (PPO on the lab)"))
    for st in rl:
        out.append(f"<h3>{html.escape(st.label)}</h3>")
        out.append(figs.img(plots.proxy_vs_gold(st.rows, st.alarms), f"proxy vs gold {st.label}",
                            f"proxy_gold_{_stem(st.label)}", "fewer than 2 rows with both metrics"))
    out.append("</div></div>")
    return "".join(out) + "</section>"


def _samples_section(rows: list[dict] | None) -> str:
    out = ["<section><h2>Example responses: the same prompts before and after alignment</h2>"]
    if not rows:
        return "".join(out) + na("samples.json (prompts with each model's response) is not in this run folder") + "</section>"
    models = list(dict.fromkeys(m for r in rows for m in (r.get("responses") or {})))
    body = []
    for r in rows:
        cells = [html.escape(str(r["prompt"]))]
        for m in models:
            text = (r.get("responses") or {}).get(m)
            g = (r.get("gold") or {}).get(m)
            badge = f'<span class="score">gold {g:.2f}</span>' if is_num(g) else ""
            cells.append((html.escape(text) if isinstance(text, str) else "—") + badge)
        body.append(cells)
    out.append(table(["prompt"] + [html.escape(m) for m in models], body, "samples"))
    return "".join(out) + "</section>"
