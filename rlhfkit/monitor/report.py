"""`rlhfkit report RUN_DIR`: one self-contained HTML page (PNG plots embedded as base64) for a run.

It reads whatever the run folder holds (`run_data`, which lists the files) and says "not
available" for the rest, so it works on a single recipe's run folder, on a pipeline folder, and on
a run that is still going; `report_html` draws the page from what was read.

Output: RUN/report.html (and the same PNGs under RUN/report_plots/ for reuse in slides or docs).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from rlhfkit.monitor.report_html import Figures, render
from rlhfkit.monitor.run_data import read_run


def write_report(run_dir: str | Path, out: str | Path | None = None, save_plots: bool = True) -> Path:
    """Write the report of a run (or pipeline) folder; returns the HTML path (default RUN/report.html)."""
    run = read_run(run_dir)
    out = Path(out) if out else Path(run_dir) / "report.html"
    figs = Figures()
    page = render(run, figs, _dt.datetime.now().strftime("%Y-%m-%d %H:%M"))
    if save_plots and figs.pngs:
        plots_dir = out.parent / "report_plots"
        plots_dir.mkdir(parents=True, exist_ok=True)
        for stem, png in figs.pngs.items():
            (plots_dir / f"{stem}.png").write_bytes(png)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
