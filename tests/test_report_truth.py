"""The report says only what the run supports: which alarms were checked (no "proxy and gold
agree" without a gold judge), the best step by the stage's own best_metric, no frontier caption
under a missing plot, what each table value was measured on ("not measured" when missing), and a
stage's status and curves from its own rows only (a reused folder)."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_report_render import build_pipeline_run, mark_complete, write_rows

from rlhfkit.monitor import plots
from rlhfkit.monitor.report import write_report


class _Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts (header row first); tags inside cells dropped,
    their texts joined by one space."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []
        elif tag == "div" and self.cell is not None:
            self.cell.append(" ")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def table_with(page: str, first_header: str) -> dict[str, dict[str, str]]:
    """The table whose first column is headed `first_header`, as {row name: {column header: cell}}."""
    parser = _Tables()
    parser.feed(page)
    for rows in parser.tables:
        if rows and rows[0][0] == first_header:
            return {r[0]: dict(zip(rows[0], r, strict=True)) for r in rows[1:]}
    raise AssertionError(f"no table headed {first_header!r}")


def _config(folder: Path, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(text)


def _spy_curves(monkeypatch) -> list[tuple[list[dict], int | None]]:
    """Record what each stage's curve plot is drawn from: (rows, best_step, best_label)."""
    calls, draw = [], plots.stage_curves

    def spy(rows, alarms=(), best_step=None, cols=3, best_label=None):
        calls.append((list(rows), best_step, best_label))
        return draw(rows, alarms, best_step, cols, best_label)

    monkeypatch.setattr(plots, "stage_curves", spy)
    return calls


# ----------------------------------------------------------------------------- alarms checked


def test_without_gold_the_report_says_proxy_vs_gold_was_not_measured(tmp_path):
    """A PPO run on a user's model: no gold judge, the live monitor ran and nothing fired, with
    length_drift switched off in its config. The page must not say proxy and gold agree."""
    run = tmp_path / "ppo"
    _config(run, "monitor:\n  alarms: [proxy_gold, kl_runaway, perplexity]\n")
    write_rows(run, "ppo", [{"step": s, "reward/mean": 0.1 * s, "kl/mean": 0.5, "response/length": 12.0}
                            for s in range(1, 13)])
    (run / "alarms.jsonl").write_text("")  # the monitor watched and nothing fired
    page = write_report(run).read_text()
    assert "proxy and gold agree" not in page
    assert "Proxy vs gold was not measured" in page
    assert "checked kl_runaway (12 rows); <b>not checked</b>" in page
    for why in ("proxy_gold (needs gold/mean: not logged)", "ensemble_disagreement (not in monitor.alarms)",
                "length_drift (not in monitor.alarms)", "perplexity (needs eval/perplexity: not logged)"):
        assert why in page, why

    # with a gold judge the same check is named, with the rows it saw, and not called agreement
    write_rows(run, "ppo", [{"step": s, "reward/mean": 0.1 * s, "gold/mean": 0.2, "kl/mean": 0.5} for s in range(13, 16)])
    page = write_report(run).read_text()
    assert "Proxy vs gold was checked in ppo (reward/mean vs gold/mean, 3 rows)" in page and "proxy and gold agree" not in page


def test_disabled_monitor_is_said_so(tmp_path):
    run = tmp_path / "dpo"
    _config(run, "monitor:\n  enabled: false\n")
    write_rows(run, "dpo", [{"step": s, "kl/mean": 50.0} for s in range(1, 6)])
    page = write_report(run).read_text()
    assert "monitor off (monitor.enabled: false): checked nothing" in page and "kl_runaway (monitor off)" in page


# ----------------------------------------------------------------------------- best step


def _peaks(run: Path) -> None:
    """gold peaks at step 3, reward/mean at step 9, kl/mean is lowest at step 6 (of 1..10)."""
    write_rows(run, "ppo", [{"step": s, "gold/mean": -abs(s - 3), "reward/mean": -abs(s - 9),
                             "kl/mean": 1.0 + abs(s - 6)} for s in range(1, 11)])


def test_best_step_follows_the_stages_best_metric(tmp_path, monkeypatch):
    calls = _spy_curves(monkeypatch)
    run = tmp_path / "ppo"
    _peaks(run)
    _config(run, "monitor:\n  best_metric: reward/mean\n")
    page = write_report(run).read_text()
    assert calls[-1][1:] == (9, "best by reward/mean") and "best step 9 by reward/mean (max" in page
    _config(run, "monitor:\n  best_metric: kl/mean\n  best_mode: min\n")
    page = write_report(run).read_text()
    assert calls[-1][1] == 6 and "best step 6 by kl/mean (min" in page
    # a key from another rlhfkit version does not cost the rest of the section
    _config(run, "monitor:\n  best_metric: reward/mean\n  a_future_setting: 1\n")
    page = write_report(run).read_text()
    assert calls[-1][1] == 9 and "best step 9 by reward/mean (max" in page
    # without a monitor section the default best_metric (gold/mean) is named
    (run / "config.yaml").unlink()
    page = write_report(run).read_text()
    assert calls[-1][1] == 3 and "best step 3 by gold/mean (max" in page


def test_best_step_is_the_monitors_record_when_the_run_finished(tmp_path, monkeypatch):
    """run_complete.json's best_step is what keep_best kept (after a resume it may differ from a
    replay of the rows); the report shows that one."""
    calls = _spy_curves(monkeypatch)
    run = tmp_path / "ppo"
    _peaks(run)
    _config(run, "monitor:\n  best_metric: reward/mean\n")
    mark_complete(run, "ppo", 1.0, 10)
    done = json.loads((run / "final" / "run_complete.json").read_text())
    (run / "final" / "run_complete.json").write_text(json.dumps({**done, "best_metric": "reward/mean", "best_step": 7,
                                                                 "best_value": -2.0}))
    page = write_report(run).read_text()
    assert calls[-1][1] == 7 and "best step 7 by reward/mean (max = -2;" in page and "run_complete.json" in page


# ----------------------------------------------------------------------------- frontier


def test_no_frontier_caption_under_a_missing_plot(tmp_path):
    """A pipeline without a gold judge writes frontier.json points with "gold": null."""
    run = tmp_path / "pipe"
    write_rows(run / "dpo", "dpo", [{"step": s, "loss/dpo": 0.7, "kl/mean": 0.1 * s} for s in range(1, 4)])
    (run / "frontier.json").write_text(json.dumps([{"method": "dpo", "label": "dpo", "kl": 0.3, "gold": None}]))
    page = write_report(run).read_text()
    frontier = page.split("Reward–KL frontier")[1].split("</section>")[0]
    assert "not available" in frontier and "no point with a gold score" in frontier
    assert "Gold score against KL" not in page and "<img" not in frontier


# ----------------------------------------------------------------------------- measured on


def _provenance(folder: Path, **keys: str) -> None:
    path = folder / "final" / "run_complete.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **keys}))


def test_stage_table_says_what_each_value_was_measured_on(tmp_path):
    """SFT's perplexity is on its held-out demonstrations (final value only, in run_complete.json),
    PPO's and DPO's on the pretraining text; PPO's gold and KL are of its training rollouts, DPO's
    of held-out prompts. Values measured on different things say so per row; a missing one says
    "not measured"."""
    run = tmp_path / "pipe"
    write_rows(run / "sft", "sft", [{"step": s, "loss/sft": 2.0 / s} for s in range(1, 5)])
    mark_complete(run / "sft", "sft", 2.0, 4)
    _provenance(run / "sft", **{"eval/perplexity_on": "lab:sft_eval"})
    done = json.loads((run / "sft" / "final" / "run_complete.json").read_text())
    (run / "sft" / "final" / "run_complete.json").write_text(json.dumps({**done, "eval_perplexity": 4.25}))
    _config(run / "ppo", "data:\n  prompts: lab:prompts_train\n")
    write_rows(run / "ppo", "ppo", [{"step": s, "gold/mean": 0.5, "kl/mean": 1.5, "eval/perplexity": 6.5}
                                    for s in range(1, 4)])
    mark_complete(run / "ppo", "ppo", 3.0, 3)
    _provenance(run / "ppo", **{"gold/judge": "lab:gold", "eval/perplexity_on": "lab:pretrain_eval"})
    write_rows(run / "dpo", "dpo", [{"step": 2, "gold/mean": 0.25, "kl/mean": 0.75}])
    mark_complete(run / "dpo", "dpo", 1.0, 2)
    _provenance(run / "dpo", **{"gold/judge": "lab:gold", "eval/prompts_on": "lab:prompts_eval",
                                "eval/perplexity_on": "lab:pretrain_eval"})
    page = write_report(run).read_text()
    t = table_with(page, "stage")
    ppl, gold, kl = "eval/perplexity differs by row", "gold/mean differs by row", "kl/mean differs by row"
    assert t["sft"][ppl] == "4.25 on lab:sft_eval" and t["ppo"][ppl] == "6.5 on lab:pretrain_eval"
    assert t["dpo"][ppl] == "not measured" and t["sft"][gold] == "not measured"
    assert t["ppo"][gold] == "0.5 by lab:gold on training rollouts of lab:prompts_train"
    assert t["dpo"][gold] == "0.25 by lab:gold on lab:prompts_eval"
    assert t["ppo"][kl] == "1.5 on training rollouts of lab:prompts_train" and t["dpo"][kl] == "0.75 on lab:prompts_eval"
    assert t["sft"]["loss/sft on training batches"] == "0.5"
    assert ("Measured on different texts or prompts in different rows (each value says which): "
            "gold/mean, kl/mean, eval/perplexity.") in page


def test_model_table_names_its_texts_once_when_they_agree(tmp_path):
    run = build_pipeline_run(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    on = {"gold/judge": "lab:gold", "eval/prompts_on": "lab:prompts_eval", "eval/perplexity_on": "lab:pretrain_eval"}
    (run / "summary.json").write_text(json.dumps({n: {**m, **on} for n, m in summary.items()}))
    t = table_with(write_report(run).read_text(), "model")
    assert t["sft"]["eval/perplexity on lab:pretrain_eval"] == "9.4"
    assert t["dpo"]["gold/mean by lab:gold on lab:prompts_eval"] == "0.54"
    assert t["base"]["kl/mean on lab:prompts_eval"] == "not measured"  # the fixture's base has no KL


# ----------------------------------------------------------------------------- reused folders


def test_prepared_folder_without_rows_is_not_started(tmp_path, monkeypatch):
    """A later run prepared ppo/ (config.yaml) and has logged nothing yet: not "in progress"."""
    calls = _spy_curves(monkeypatch)
    run = tmp_path / "pipe"
    write_rows(run / "sft", "sft", [{"step": s, "loss/sft": 1.0} for s in range(1, 4)])
    mark_complete(run / "sft", "sft", 1.0, 3)
    _config(run / "ppo", "monitor:\n  kl_max: 5.0\n")
    page = write_report(run).read_text()
    assert "in progress" not in page and "not started" in page
    assert table_with(page, "stage")["ppo"]["status"] == "not started" and len(calls) == 1  # sft's curves only


def test_curves_and_status_come_from_the_newest_runs_rows(tmp_path, monkeypatch):
    """A metrics.jsonl an older run shared: rows of another stage, and an earlier run of this one
    whose step numbering the new run restarted. Only the new run's rows count."""
    calls = _spy_curves(monkeypatch)
    run = tmp_path / "dpo"
    write_rows(run, "sft", [{"step": s, "loss/sft": 1.0} for s in range(1, 51)])
    write_rows(run, "dpo", [{"step": s, "loss/dpo": 0.5, "kl/mean": 100.0} for s in range(1, 21)])
    write_rows(run, "dpo", [{"step": s, "loss/dpo": 0.6, "kl/mean": 1.0} for s in range(1, 4)])
    page = write_report(run).read_text()
    (rows, _, _), = calls
    assert [r["step"] for r in rows] == [1, 2, 3] and {r["stage"] for r in rows} == {"dpo"}
    row = table_with(page, "stage")["dpo"]
    assert (row["kind"], row["status"], row["steps"]) == ("dpo", "in progress", "3")
    assert "kl_runaway" not in page.split("Alarms checked")[0]  # the old run's KL of 100 raised nothing


def test_finished_reward_ensemble_is_complete(tmp_path):
    """An ensemble's final/ holds ensemble.json (no run_complete.json); its members' records say
    how long they took and what they were measured on."""
    run = tmp_path / "pipe"
    reward = run / "reward"
    _config(reward, "ensemble:\n  members: 2\n")
    for m in range(2):
        write_rows(reward / "members" / f"member-{m}", "reward", [{"step": s, "loss/reward": 0.6} for s in range(1, 5)])
        (reward / "final" / f"member-{m}").mkdir(parents=True)
        (reward / "final" / f"member-{m}" / "run_complete.json").write_text(json.dumps(
            {"stage": "reward", "seconds": 10.0 + m, "steps": 4, "normalize/prompts_on": "lab:prompts_eval"}))
    (reward / "final" / "ensemble.json").write_text(json.dumps({"members": ["member-0", "member-1"]}))
    write_rows(reward, "reward_ensemble", [{"step": 0, "ensemble/std": 0.2}])
    page = write_report(run).read_text()
    row = table_with(page, "stage")["reward"]
    assert (row["kind"], row["status"], row["steps"], row["seconds"]) == ("reward", "complete", "4", "21")
    assert "Scores normalised on responses to lab:prompts_eval" in page and "in progress" not in page


# ----------------------------------------------------------------------------- errors


def test_missing_run_folder_is_one_line(tmp_path, capsys):
    from rlhfkit.cli import main

    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run folder not found" in err and "Traceback" not in err


@pytest.mark.parametrize("broken, said", [
    ("summary.json", "not available</b> — summary.json"),
    ("samples.json", "not available</b> — samples.json"),
    ("frontier.json", "Gold score against KL to the reference (each stage&#x27;s path during training"),
])
def test_unreadable_run_files_read_as_missing(tmp_path, broken, said):
    run = build_pipeline_run(tmp_path)
    (run / broken).write_text("{torn")
    page = write_report(run).read_text()
    assert "could not be drawn" not in page
    assert said in page
