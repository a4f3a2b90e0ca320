"""The report split by role: `run_data` reads a run folder into typed data, `report_html` draws
the page from that data alone (no paths), the CSS is a package file, and no module is long."""

from __future__ import annotations

import fnmatch
import inspect
import tomllib
from importlib import resources
from pathlib import Path

from test_report_render import build_pipeline_run

from rlhfkit.monitor import report_html
from rlhfkit.monitor.alarms import MonitorConfig
from rlhfkit.monitor.report_html import Figures, render
from rlhfkit.monitor.run_data import RunData, Stage, read_run

ROOT = Path(__file__).resolve().parents[1]


def test_page_is_drawn_from_data_held_in_memory(tmp_path):
    """No run folder at all: a RunData built by hand renders, and the figures are handed back
    rather than written anywhere."""
    rows = [{"step": s, "stage": "ppo", "reward/mean": 0.1 * s, "kl/mean": 0.5 * s} for s in range(1, 11)]
    stage = Stage(name="ppo", path=tmp_path / "never-created", kind="ppo", rows=rows, complete=None,
                  monitor=MonitorConfig(best_metric="reward/mean"))
    run = RunData(title="in-memory", location="nowhere", stages=[stage], summary={"sft": {"gold/mean": 0.25}},
                  frontier=[], frontier_source="nothing to plot", samples=None)
    figs = Figures()
    page = render(run, figs, "now")
    assert "rlhfkit report — in-memory" in page and "nothing to plot" in page
    assert set(figs.pngs) == {"gold_by_model", "curves_ppo"} and not (tmp_path / "never-created").exists()
    assert "ppo</td><td>in progress</td><td>10</td>" in page


def test_rendering_functions_take_no_paths():
    for name, fn in inspect.getmembers(report_html, inspect.isfunction):
        if fn.__module__ != report_html.__name__:
            continue
        for p in inspect.signature(fn).parameters.values():
            assert "Path" not in str(p.annotation), f"report_html.{name}({p.name}: {p.annotation})"


def test_reading_matches_what_the_page_shows(tmp_path):
    run = read_run(build_pipeline_run(tmp_path))
    assert [s.name for s in run.stages] == ["sft", "compare", "reward", "ppo", "dpo"]
    assert [s.status for s in run.stages] == ["complete", "collected", "complete", "complete", "complete"]
    assert run.frontier_source == "frontier.json" and len(run.frontier) == 6 and len(run.samples) == 2
    assert list(run.summary) == ["base", "sft", "ppo", "dpo"]
    assert run.stages[2].rm_eval and set(run.stages[2].members) == {"member-0", "member-1", "member-2"}


def test_css_is_package_data_and_inlined(tmp_path):
    css = resources.files("rlhfkit.monitor").joinpath("static", "report.css").read_text(encoding="utf-8")
    assert ".chip.done" in css
    page = render(read_run(build_pipeline_run(tmp_path)), Figures(), "now")
    assert css in page
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["rlhfkit"]
    assert any(fnmatch.fnmatch("monitor/static/report.css", g) for g in data), data  # shipped in the wheel


def test_monitor_modules_stay_small():
    for path in sorted((ROOT / "rlhfkit" / "monitor").glob("*.py")):
        n = len(path.read_text().split("\n"))
        assert n <= 400, f"{path.name}: {n} lines"
