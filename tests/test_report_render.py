"""The run report: built from a synthetic pipeline folder, checked for its content, its "not
available" notes on partial runs, and rendered in headless Chromium (screenshot)."""

from __future__ import annotations

import base64
import json
import math
import os
import random
import re
import shutil
from pathlib import Path

import pytest

from rlhfkit.monitor.alarms import AlarmMonitor, MonitorConfig
from rlhfkit.monitor.report import write_report
from rlhfkit.monitor.run_data import discover

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def write_rows(folder: Path, stage: str, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metrics.jsonl", "a") as f:
        for r in rows:
            f.write(json.dumps({"step": r["step"], "stage": stage, **{k: v for k, v in r.items() if k != "step"}}) + "\n")


def mark_complete(folder: Path, stage: str, seconds: float, steps: int) -> None:
    (folder / "final").mkdir(parents=True, exist_ok=True)
    (folder / "final" / "run_complete.json").write_text(json.dumps({"stage": stage, "seconds": seconds, "steps": steps}))


def _calibration(acc: float) -> list[dict]:
    return [{"bin": [0.5 + b * 0.1, 0.6 + b * 0.1], "count": 40 - 6 * b, "confidence": 0.55 + b * 0.1,
             "accuracy": min(1.0, acc - 0.1 + b * 0.08)} for b in range(5)]


def build_pipeline_run(root: Path, seed: int = 0) -> Path:
    """A pipeline folder as the pipeline will write it: sft, compare, reward (ensemble of 3), ppo with
    β = 0 against the ensemble (proxy up, gold peaks at step 35 then falls: alarms logged by the
    monitor), dpo; plus summary.json, frontier.json and samples.json."""
    rng = random.Random(seed)
    run = root / "pipeline"
    sft = run / "sft"
    write_rows(sft, "sft", [{"step": s, "loss/sft": 3.0 * math.exp(-s / 25) + 1.2 + rng.gauss(0, 0.05),
                              **({"eval/perplexity": 9 + 20 * math.exp(-s / 25)} if s % 10 == 0 else {})}
                             for s in range(1, 81)])
    mark_complete(sft, "sft", 95.0, 80)

    compare = run / "compare"
    compare.mkdir(parents=True)
    (compare / "comparisons.jsonl").write_text("".join(
        json.dumps({"prompt": f"p{i}", "responses": ["a", "b"], "ranking": [0, 1]}) + "\n" for i in range(256)))
    (compare / "config.yaml").write_text("k: 2\n")

    reward = run / "reward"
    for m in range(3):
        write_rows(reward / "members" / f"member-{m}", "reward",
                    [{"step": s, "loss/reward": 0.69 * math.exp(-s / 30) + 0.3 + rng.gauss(0, 0.03),
                      "reward/accuracy": min(0.95, 0.5 + 0.3 * (1 - math.exp(-s / 15)) + rng.gauss(0, 0.04)),
                      **({"eval/accuracy": 0.5 + 0.24 * (1 - math.exp(-s / 15)) + 0.01 * m} if s % 10 == 0 else {})}
                     for s in range(1, 61)])
        mark_complete(reward / "members" / f"member-{m}", "reward", 30.0, 60)
    ev = {f"member-{m}": {"eval/accuracy": 0.73 + 0.01 * m, "eval/margin": 0.9, "eval/ece": 0.04, "eval/pairs": 256,
                          "calibration": _calibration(0.73), "gold/agreement": 0.76, "gold/of_ceiling": 0.9}
          for m in range(3)}
    for how in ("mean", "min", "uwo"):
        ev[how] = {"eval/accuracy": 0.75, "eval/margin": 0.8, "eval/ece": 0.03, "eval/pairs": 256,
                   "calibration": _calibration(0.75), "gold/agreement": 0.78, "gold/of_ceiling": 0.92}
    (reward / "reward_eval.json").write_text(json.dumps(ev))
    write_rows(reward, "reward_ensemble", [{"step": 0, "ensemble/std": 0.31}])
    mark_complete(reward, "reward", 92.0, 60)

    ppo = run / "ppo"
    mon = AlarmMonitor(MonitorConfig(kl_max=30.0), stage="ppo", path=ppo / "alarms.jsonl", verbose=False)
    rows = []
    for s in range(1, 101):
        gold = (0.30 + 0.008 * s if s <= 35 else 0.58 - 0.006 * (s - 35)) + rng.gauss(0, 0.015)
        row = {"step": s, "reward/mean": 0.04 * s + rng.gauss(0, 0.1), "gold/mean": gold,
               "kl/mean": 0.45 * s + abs(rng.gauss(0, 0.5)), "kl/beta": 0.0,
               "reward/ensemble_std": 0.3 + (0.06 * (s - 40) if s > 40 else 0) + rng.gauss(0, 0.01),
               "response/length": 18 + 0.08 * s + rng.gauss(0, 1), "loss/policy": rng.gauss(0, 0.02),
               "loss/value": 0.5 * math.exp(-s / 30) + 0.05, "policy/entropy": 2.0 - 0.012 * s}
        if s % 10 == 0:
            row["eval/perplexity"] = 10.0 * (1 + 0.004 * s)
        rows.append(row)
        mon.update(s, {k: v for k, v in row.items() if k != "step"})
    write_rows(ppo, "ppo", rows)
    mark_complete(ppo, "ppo", 240.0, 100)

    dpo = run / "dpo"
    write_rows(dpo, "dpo", [{"step": s, "loss/dpo": 0.69 * math.exp(-s / 40) + 0.3 + rng.gauss(0, 0.02),
                              "rewards/accuracy": min(1.0, 0.5 + 0.4 * (1 - math.exp(-s / 20)) + rng.gauss(0, 0.03)),
                              "rewards/margin": 0.02 * s,
                              **({"gold/mean": 0.3 + 0.003 * s, "kl/mean": 0.1 * s, "response/length": 19.0,
                                  "eval/perplexity": 9.5 + 0.005 * s} if s % 10 == 0 else {})}
                             for s in range(1, 81)])
    mark_complete(dpo, "dpo", 120.0, 80)

    (run / "summary.json").write_text(json.dumps({
        "base": {"gold/mean": 0.12, "eval/perplexity": 9.1, "response/length": 31.0, "response/eos_rate": 0.4},
        "sft": {"gold/mean": 0.30, "eval/perplexity": 9.4, "response/length": 18.0, "response/eos_rate": 0.97},
        "ppo": {"gold/mean": 0.41, "kl/mean": 45.0, "eval/perplexity": 14.0, "response/length": 26.0, "response/eos_rate": 0.9},
        "dpo": {"gold/mean": 0.54, "kl/mean": 8.0, "eval/perplexity": 9.9, "response/length": 19.0, "response/eos_rate": 0.98},
    }))
    (run / "frontier.json").write_text(json.dumps(
        [{"method": "ppo", "kl": kl, "gold": g, "label": f"β={b}"} for kl, g, b in [(3, 0.45, 0.2), (9, 0.55, 0.05), (45, 0.41, 0)]]
        + [{"method": "dpo", "kl": kl, "gold": g, "label": f"β={b}"} for kl, g, b in [(2, 0.4, 0.5), (8, 0.54, 0.1), (20, 0.5, 0.02)]]))
    (run / "samples.json").write_text(json.dumps([
        {"prompt": "Review: the film", "responses": {"sft": "was long and dull .", "ppo": "great great great great !",
                                                      "dpo": "was fun , the cast loved it ."},
         "gold": {"sft": 0.1, "ppo": 0.35, "dpo": 0.8}},
        {"prompt": "Review: the <b>ending</b>", "responses": {"sft": "i hated it .", "ppo": "loved loved loved",
                                                              "dpo": "was very good ."},
         "gold": {"sft": 0.0, "ppo": 0.4, "dpo": 0.7}},
    ]))
    return run


# ----------------------------------------------------------------------------- content


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_of_a_pipeline_shows_every_part(tmp_path):
    run = build_pipeline_run(tmp_path)
    assert [s.name for s in discover(run)] == ["sft", "compare", "reward", "ppo", "dpo"]
    page = write_report(run).read_text()
    assert "not available" not in page and "could not be drawn" not in page
    imgs = _images(page)
    # curves for sft/reward/ppo/dpo, gold bars, RM accuracy + calibration, frontier, proxy-vs-gold for ppo (+dpo)
    assert len(imgs) >= 9 and all(b.startswith(b"\x89PNG\r\n\x1a\n") and len(b) > 5000 for b in imgs)
    assert len(list((run / "report_plots").glob("*.png"))) == len(imgs)
    # the β = 0 PPO run's alarms, with their evidence, logged by the monitor
    alarms = [json.loads(x) for x in (run / "ppo" / "alarms.jsonl").read_text().splitlines()]
    assert {"proxy_gold", "ensemble_disagreement", "kl_runaway"} <= {a["name"] for a in alarms}
    for a in alarms:
        assert a["message"].split(";")[0].replace("&", "&amp;") in page
    assert "gold_peak_step" in page and "report-time scan" not in page.split("ppo</td>")[1].split("</tr>")[0]
    # summary: gold path base → sft → ppo → dpo; samples are escaped
    assert "base 0.12 → sft 0.3 → ppo 0.41 → dpo 0.54" in page
    assert "Review: the &lt;b&gt;ending&lt;/b&gt;" in page and "<b>ending</b>" not in page
    assert "256 comparisons" in page and "member-2" in page


def test_partial_run_says_what_is_missing_instead_of_failing(tmp_path):
    """A single SFT run folder in progress: no RM, no frontier, no samples, no summary."""
    run = tmp_path / "sft_only"
    write_rows(run, "sft", [{"step": s, "loss/sft": 2.0 / s} for s in range(1, 30)])
    page = write_report(run).read_text()
    for missing in ("summary.json", "no reward stage", "needs frontier.json", "proxy vs gold needs", "samples.json"):
        assert missing in page, missing
    assert "in progress" in page and len(_images(page)) == 1  # the SFT curves
    # an empty folder and a broken summary.json still give a page
    (tmp_path / "empty").mkdir()
    assert "no stage folders" in write_report(tmp_path / "empty").read_text()
    (run / "summary.json").write_text("{not json")
    assert "summary.json" in write_report(run).read_text()


def test_stage_without_a_monitor_is_scanned_at_report_time(tmp_path):
    """A run logged before the monitor existed: the report computes the alarms from metrics.jsonl,
    using the stage's own `monitor:` config section (here a KL bound of 5 nats)."""
    run = tmp_path / "old"
    write_rows(run / "ppo", "ppo", [{"step": s, "kl/mean": float(s), "reward/mean": 0.1 * s} for s in range(1, 12)])
    (run / "ppo" / "config.yaml").write_text("monitor:\n  kl_max: 5.0\n")
    (st,) = discover(run)
    assert st.alarms_source == "scan" and [(a["name"], a["step"]) for a in st.alarms] == [("kl_runaway", 8)]
    page = write_report(run).read_text()
    assert "report-time scan" in page and "above the bound 5" in page
    # once a monitor has run (alarms.jsonl exists, even empty), its record is trusted as is
    (run / "ppo" / "alarms.jsonl").write_text("")
    assert discover(run)[0].alarms == [] and "No alarm fired" in write_report(run).read_text()


def test_cli_report_verb(tmp_path, capsys):
    from rlhfkit.cli import main

    run = tmp_path / "ppo_run"
    write_rows(run, "ppo", [{"step": s, "kl/mean": 10.0 * s} for s in range(1, 6)])
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "r.html").is_file() and "r.html" in out
    assert "[alarm] ppo step 5: kl_runaway: KL 50 nats above the bound 20" in out


# ----------------------------------------------------------------------------- rendering


def _chromium() -> str:
    """Debian's chromium driven by Playwright for Python; never a downloaded browser build.
    `make browser` installs both (apt chromium + pip playwright); without them the test skips."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed: `make browser` (or pip install playwright) installs it")
    exe = os.environ.get("RLHFKIT_CHROMIUM") or shutil.which("chromium") or CHROMIUM
    if not Path(exe).exists():
        pytest.skip(f"no chromium browser found ({exe}): `make browser` installs Debian's chromium with apt")
    return exe


def test_report_renders_in_headless_chromium(tmp_path):
    exe = _chromium()
    from playwright.sync_api import sync_playwright

    run = build_pipeline_run(tmp_path)
    report = write_report(run)
    shot = run / "report_screenshot.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            failed = []
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.goto(report.resolve().as_uri(), wait_until="load")
            assert page.title().startswith("rlhfkit report")
            # every embedded plot decoded and laid out at a real size
            sizes = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.clientWidth])")
            assert len(sizes) >= 9 and all(ok and nat > 200 and shown > 200 for ok, nat, shown in sizes), sizes
            assert failed == []  # self-contained: nothing fetched from anywhere
            assert page.locator("table.alarm tr").count() >= 4  # header + the ppo alarms
            height = page.evaluate("document.body.scrollHeight")
            assert height > 2000
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 100_000
