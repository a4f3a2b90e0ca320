"""Live reward-hacking alarms in the PPO recipe (tiny model, 4 steps): warn logs and goes on, stop
ends training at the alarm's step with final/ written, keep_best leaves final/ = the best step's
policy, and a resumed run neither duplicates nor loses alarms.

The alarms are made to fire at known steps with thresholds no run can stay under: kl_runaway
with kl_max = -1e9 fires after kl_patience rows, length_drift with window 1 and a negative bound
fires at the second row. keep_best picks the step by train/lr under a linear schedule with 50%
warmup (4 optimizer steps: lr after each = 0.5, 1, 0.5, 0 x peak), so the best step is 2.
"""

from __future__ import annotations

import json
import shutil

import torch
from conftest import build_tiny_model, random_demos, write_jsonl
from safetensors.torch import load_file

from rlhfkit.config import load_config
from rlhfkit.monitor.alarms import read_alarms
from rlhfkit.monitor.run_data import discover
from rlhfkit.recipes.ppo import PPOConfig, run


def count_great(prompts, responses):
    return [r.split().count("great") / 4 for r in responses]


def _setup(tmp_path):
    model = build_tiny_model(tmp_path / "m")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": d["prompt"]} for d in random_demos(32, 0)])
    return model, prompts


def _cfg(model, prompts, *overrides):
    return load_config(PPOConfig, None, [
        f"model.name_or_path={model}", f"data.prompts={prompts}", "eval.text=null", "log.progress=false",
        f"reward.source={__name__}:count_great", "train.batch_size=8", "train.micro_batch_size=8",
        "rollout.max_new_tokens=4", "ppo.ppo_epochs=1", "train.lr=1e-2", "train.max_steps=4", *overrides])


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _complete(run_dir):
    return json.loads((run_dir / "final" / "run_complete.json").read_text())


def test_warn_goes_on_and_resume_neither_duplicates_nor_loses_alarms(tmp_path):
    model, prompts = _setup(tmp_path)
    cfg = _cfg(model, prompts, "log.save_every=2", "monitor.alarms=[length_drift, kl_runaway]",
               "monitor.window=1", "monitor.min_points=1", "monitor.length_max_drift=-1",
               "monitor.kl_max=-1e9", "monitor.kl_patience=3")
    a = tmp_path / "a"
    run(cfg, a)
    assert [r["step"] for r in _rows(a)] == [1, 2, 3, 4]  # warn: training went on
    alarms = read_alarms(a / "alarms.jsonl")
    assert [(x.name, x.step, x.stage, x.action) for x in alarms] == [
        ("length_drift", 2, "ppo", "warn"), ("kl_runaway", 3, "ppo", "warn")]
    assert _complete(a)["alarms"] == ["length_drift", "kl_runaway"] and "stopped_by_alarm" not in _complete(a)
    (stage,) = discover(a)  # the report reads the logged file (no report-time scan)
    assert stage.alarms_source == "logged" and [x["name"] for x in stage.alarms] == ["length_drift", "kl_runaway"]

    # Crash after step 4 (alarms at 2 and 3 written), resume from step-2: the step-2 alarm is replayed
    # silently, the step-3 one is dropped from the file and fires again: each once, as before.
    b = tmp_path / "b"
    shutil.copytree(a, b)
    shutil.rmtree(b / "final")
    run(cfg, b, resume=True)
    assert (b / "alarms.jsonl").read_text() == (a / "alarms.jsonl").read_text()

    # A fresh run in the same folder starts a fresh alarms file.
    run(_cfg(model, prompts, "monitor.alarms=[kl_runaway]", "monitor.kl_max=-1e9", "monitor.kl_patience=4"), b)
    assert [(x.name, x.step) for x in read_alarms(b / "alarms.jsonl")] == [("kl_runaway", 4)]


def test_stop_ends_training_at_the_alarm_with_final_written(tmp_path):
    model, prompts = _setup(tmp_path)
    cfg = _cfg(model, prompts, "monitor.action=stop", "monitor.alarms=[kl_runaway]", "monitor.kl_max=-1e9",
               "monitor.kl_patience=2", "log.save_every=0")
    out = tmp_path / "run"
    final = run(cfg, out)
    assert [r["step"] for r in _rows(out)] == [1, 2]
    done = _complete(out)
    assert done["stopped_by_alarm"] == "kl_runaway" and done["stopped_at"] == 2 and done["steps"] == 2
    assert (final / "model.safetensors").exists() and (final / "critic" / "model.safetensors").exists()
    assert [(x.name, x.step, x.action) for x in read_alarms(out / "alarms.jsonl")] == [("kl_runaway", 2, "stop")]


def test_keep_best_leaves_the_best_steps_policy_in_final_and_survives_resume(tmp_path):
    model, prompts = _setup(tmp_path)
    cfg = _cfg(model, prompts, "monitor.action=keep_best", "monitor.best_metric=train/lr", "train.schedule=linear",
               "train.warmup_ratio=0.5", "log.save_every=2", "monitor.alarms=[kl_runaway]", "monitor.kl_max=-1e9",
               "monitor.kl_patience=1")
    a = tmp_path / "a"
    run(cfg, a)
    lrs = [r["train/lr"] for r in _rows(a)]
    assert max(range(4), key=lrs.__getitem__) == 1 and len(_rows(a)) == 4  # best = step 2; an alarm did not stop it
    done = _complete(a)
    assert done["best_step"] == 2 and done["final_step"] == 2 and done["best_value"] == lrs[1]
    assert json.loads((a / "best" / "best.json").read_text())["step"] == 2
    final = load_file(str(a / "final" / "model.safetensors"))
    best = load_file(str(a / "best" / "model.safetensors"))
    at_step_2 = load_file(str(a / "checkpoints" / "step-2" / "policy" / "model.safetensors"))
    for k in final:
        torch.testing.assert_close(final[k], best[k], rtol=0, atol=0)
        torch.testing.assert_close(final[k], at_step_2[k], rtol=0, atol=0)
    # ... and not the last step's: the warn run with the same seed ends elsewhere.
    w = tmp_path / "w"
    run(_cfg(model, prompts, "train.schedule=linear", "train.warmup_ratio=0.5", "log.save_every=0"), w)
    last = load_file(str(w / "final" / "model.safetensors"))
    assert max((final[k] - last[k]).abs().max().item() for k in final) > 1e-4

    b = tmp_path / "b"  # resume from step 2: best/ (step 2) stays valid, final/ is the same
    shutil.copytree(a, b)
    shutil.rmtree(b / "final")
    run(cfg, b, resume=True)
    assert _complete(b)["best_step"] == 2
    resumed = load_file(str(b / "final" / "model.safetensors"))
    for k in final:
        torch.testing.assert_close(resumed[k], final[k], rtol=0, atol=1e-6)



def test_keep_best_resume_with_a_lost_future_best_or_a_lost_snapshot(tmp_path, capsys):
    """best_mode=min on a decaying lr: every step improves, best/ ends at step 4. Resuming from
    step-2 drops that best/ (it belongs to a step after the checkpoint) and steps 3 and 4 improve
    again: final/ equals the uninterrupted run's. If best/ of the replayed best step (here 1, with
    best_mode=max) is gone, the recipe says so and searches the best again from the resumed step."""
    model, prompts = _setup(tmp_path)
    common = ["monitor.action=keep_best", "monitor.best_metric=train/lr", "train.schedule=linear", "log.save_every=2",
              "monitor.enabled=false"]
    cfg = _cfg(model, prompts, *common, "monitor.best_mode=min")
    a = tmp_path / "a"
    run(cfg, a)
    assert _complete(a)["best_step"] == 4 and json.loads((a / "best" / "best.json").read_text())["step"] == 4
    assert not (a / "alarms.jsonl").exists()  # monitor.enabled=false: no alarms file, the best still tracked
    b = tmp_path / "b"
    shutil.copytree(a, b)
    shutil.rmtree(b / "final")
    run(cfg, b, resume=True)
    assert _complete(b)["best_step"] == 4 and _complete(b)["final_step"] == 4
    fa, fb = (load_file(str(d / "final" / "model.safetensors")) for d in (a, b))
    for k in fa:
        torch.testing.assert_close(fb[k], fa[k], rtol=0, atol=1e-6)

    cfg = _cfg(model, prompts, *common, "monitor.best_mode=max")
    c = tmp_path / "c"
    run(cfg, c)
    assert _complete(c)["best_step"] == 1
    shutil.rmtree(c / "final")
    shutil.rmtree(c / "best")
    capsys.readouterr()
    run(cfg, c, resume=True)
    assert "searched again from step 2" in capsys.readouterr().out
    assert _complete(c)["best_step"] == 3 == json.loads((c / "best" / "best.json").read_text())["step"]
