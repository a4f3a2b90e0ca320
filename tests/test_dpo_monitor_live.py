"""Live reward-hacking alarms in DPO (tiny models): warn logs what an offline scan of the same
rows says, stop ends training at the alarm's step with a normal final/, keep_best makes final/ the
best step's weights, and a resumed run neither loses nor duplicates alarms.

Alarms are forced deterministically: `kl_max: -1` makes every kl/mean row "above the bound", so
kl_runaway fires at the kl_patience-th row that carries kl/mean (eval rows only: the monitor has
to cope with the sparse rows), whatever the tiny model learns."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny_model, crash_at_save, write_jsonl
from safetensors.torch import load_file
from test_dpo_recipe import random_comparisons

from rlhfkit.config import load_config
from rlhfkit.monitor.alarms import read_alarms, scan
from rlhfkit.recipes import dpo
from rlhfkit.train.run_dir import read_metrics


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("dpo_monitor")
    return {"model": build_tiny_model(d / "m"), "train": write_jsonl(d / "train.jsonl", random_comparisons(24, seed=0)),
            "prompts": write_jsonl(d / "prompts.jsonl", [{"prompt": p} for p in ("the movie", "i liked", "the plot was")])}


def _cfg(files, *extra):
    return load_config(dpo.DPOConfig, None, [
        f"model.name_or_path={files['model']}", f"data.train={files['train']}", "data.eval=null",
        f"sampling.prompts={files['prompts']}", "sampling.max_new_tokens=6", "sampling.gold=false", "sampling.text=null",
        "train.batch_size=8", "train.micro_batch_size=8", "train.lr=2e-2", "train.max_steps=6", "train.warmup_ratio=0",
        "train.schedule=constant", "log.eval_every=2", "log.save_every=2", "log.keep_checkpoints=10",
        "log.progress=false", "monitor.kl_max=-1", "monitor.kl_patience=2", *extra])


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _alarms(run):
    return [(a.name, a.step, a.action) for a in read_alarms(run / "alarms.jsonl")]


@pytest.fixture(scope="module")
def warn_run(files, tmp_path_factory):
    """The reference run: action warn (the default), checkpoints at steps 2 and 4."""
    cfg = _cfg(files)
    out = tmp_path_factory.mktemp("warn") / "run"
    dpo.run(cfg, out)
    return cfg, out


def test_default_monitor_watches_the_implicit_reward_margin():
    cfg = dpo.DPOConfig()
    assert cfg.monitor.proxy_key == "rewards/margin" and cfg.monitor.action == "warn"
    assert "rewards/margin" in dpo.METRIC_KEYS  # the key the recipe really logs


def test_proxy_gold_fires_on_sparse_dpo_rows():
    """DPO rows: rewards/margin every step, gold/mean on eval rows only (every 2nd step). Margin
    rising while gold falls must still trip proxy_gold with DPO's defaults (window 10, min 8
    points): on the 8th row that carries both, i.e. step 16, not before."""
    rows = []
    for step in range(1, 21):
        row = {"step": step, "stage": "dpo", "rewards/margin": 0.1 * step + 0.01 * (step % 3)}
        if step % 2 == 0:
            row["gold/mean"] = 1.0 - 0.05 * step + 0.004 * (step % 4)
        rows.append(row)
    cfg = dpo.DPOConfig().monitor
    alarms = scan(rows, cfg)
    assert [(a.name, a.step) for a in alarms] == [("proxy_gold", 16)]
    assert scan(rows[:15], cfg) == []


def test_warn_logs_the_alarms_an_offline_scan_finds_and_goes_on(warn_run):
    cfg, out = warn_run
    rows = read_metrics(out, "dpo")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if "kl/mean" in r] == [2, 4, 6]
    assert _alarms(out) == [("kl_runaway", 4, "warn")]  # 2nd row with kl/mean
    assert [(a.name, a.step) for a in scan(rows, cfg.monitor)] == [("kl_runaway", 4)]
    done = json.loads((out / "final" / "run_complete.json").read_text())
    assert done["steps"] == 6 and "stopped_by_alarm" not in done and done["alarms"] == ["kl_runaway"]
    assert not (out / "best").exists()


def test_stop_ends_training_at_the_alarm_step_with_a_normal_final(files, warn_run, tmp_path):
    out = tmp_path / "run"
    dpo.run(_cfg(files, "monitor.action=stop"), out)
    assert [r["step"] for r in read_metrics(out, "dpo")] == [1, 2, 3, 4]
    assert _alarms(out) == [("kl_runaway", 4, "stop")]
    done = json.loads((out / "final" / "run_complete.json").read_text())
    assert done["stopped_by_alarm"] == "kl_runaway" and done["stopped_at"] == 4 and done["steps"] == 4
    # final/ = the weights after step 4 of the same trajectory (the warn run's step-4 checkpoint).
    ref = warn_run[1]
    assert _same(_weights(out / "final"), _weights(ref / "checkpoints" / "step-4" / "policy"))
    assert not _same(_weights(out / "final"), _weights(ref / "final"))


@pytest.mark.parametrize("log_every", [1, 2])
def test_keep_best_final_is_the_best_step(files, warn_run, tmp_path, log_every):
    """best = the eval row with the smallest KL to the reference; final/ must hold that step's
    weights (= best/ = the warn run's checkpoint at that step), not the last step's. With
    log_every 2 the monitor sees (and snapshots at) logged rows only."""
    out = tmp_path / "run"
    dpo.run(_cfg(files, "monitor.action=keep_best", "monitor.best_metric=kl/mean", "monitor.best_mode=min",
                 f"log.log_every={log_every}"), out)
    rows = read_metrics(out, "dpo")
    assert [r["step"] for r in rows] == list(range(log_every, 7, log_every))  # keep_best goes on after the alarm
    evals = [(r["kl/mean"], r["step"]) for r in rows if "kl/mean" in r]
    best_value, best_step = min(evals)
    assert best_step != 6, "the test needs a best step before the last one"
    done = json.loads((out / "final" / "run_complete.json").read_text())
    assert done["best_step"] == done["final_step"] == best_step
    assert done["best_value"] == pytest.approx(best_value)
    assert json.loads((out / "best" / "best.json").read_text())["step"] == best_step
    final = _weights(out / "final")
    assert _same(final, _weights(out / "best"))
    assert _same(final, _weights(warn_run[1] / "checkpoints" / f"step-{best_step}" / "policy"))
    assert not _same(final, _weights(warn_run[1] / "final"))


def test_resume_neither_loses_nor_duplicates_alarms(files, tmp_path):
    """length_drift (window 1, any drift) fires at step 2 and kl_runaway (patience 3, kl on every
    row) at step 3. Crash at step 4 before its checkpoint: the run resumes from step 2, so the
    step-2 alarm is replayed (latched, not re-logged) and the step-3 one is dropped and fires
    again: the alarms file ends exactly as in an uninterrupted run, as do the weights."""
    extra = ["log.eval_every=1", "monitor.kl_patience=3", "monitor.window=1", "monitor.min_points=1",
             "monitor.length_max_drift=-1", "monitor.alarms=[kl_runaway, length_drift]"]
    full = dpo.run(_cfg(files, *extra), tmp_path / "full")
    expected = [("length_drift", 2, "warn"), ("kl_runaway", 3, "warn")]
    assert _alarms(tmp_path / "full") == expected

    with crash_at_save(4, written=False):
        dpo.run(_cfg(files, *extra), tmp_path / "cut")
    assert _alarms(tmp_path / "cut") == expected  # both fired before the crash
    resumed = dpo.run(_cfg(files, *extra), tmp_path / "cut", resume=True)
    assert _alarms(tmp_path / "cut") == expected
    assert [r["step"] for r in read_metrics(tmp_path / "cut", "dpo")] == [1, 2, 3, 4, 5, 6]
    a, b = _weights(full), _weights(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_keep_best_survives_resume_after_a_lost_best_snapshot(files, tmp_path, monkeypatch, capsys):
    """A scripted gold/mean (by step: best at 2, then better at 4) and a crash at step 5 with the
    last checkpoint at 3: best/ then holds step 4, which resume drops as a lost future, leaving the
    replayed best (step 2) without a snapshot. The resumed run must still end like the
    uninterrupted one: final/ = best/ = step 4's weights, summary best_step 4."""
    script = {1: 0.1, 2: 0.5, 3: 0.2, 4: 0.9, 5: 0.3, 6: 0.4}

    def scripted_eval(cfg, policy, ref, tokenizer, prompts, text_feats, s):
        step = len(read_metrics(s.run.path, "dpo")) + 1  # evaluated before its own row is logged
        return {"gold/mean": script[step]}

    monkeypatch.setattr(dpo, "sample_eval", scripted_eval)
    extra = ["log.eval_every=1", "log.save_every=3", "monitor.action=keep_best"]
    full = dpo.run(_cfg(files, *extra), tmp_path / "full")
    assert json.loads((full / "run_complete.json").read_text())["best_step"] == 4

    from rlhfkit.train import session

    original = session.TrainSession.log

    def crash_at_5(self, step, metrics):
        if step == 5:
            raise KeyboardInterrupt
        original(self, step, metrics)

    monkeypatch.setattr(session.TrainSession, "log", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        dpo.run(_cfg(files, *extra), tmp_path / "cut")
    assert json.loads((tmp_path / "cut" / "best" / "best.json").read_text())["step"] == 4
    monkeypatch.setattr(session.TrainSession, "log", original)
    capsys.readouterr()
    resumed = dpo.run(_cfg(files, *extra), tmp_path / "cut", resume=True)
    assert "snapshot of best step 2 was overwritten" in capsys.readouterr().out
    done = json.loads((resumed / "run_complete.json").read_text())
    assert done["best_step"] == done["final_step"] == 4 and done["best_value"] == 0.9
    assert _same(_weights(resumed), _weights(tmp_path / "cut" / "best"))
    a, b = _weights(full), _weights(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
