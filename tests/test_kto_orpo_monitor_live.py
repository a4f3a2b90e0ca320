"""Live reward-hacking alarms in KTO and ORPO (tiny models), as in test_dpo_monitor_live: warn logs
what an offline scan finds, stop ends training at the alarm's step with a normal final/, keep_best
makes final/ the best step's weights, a resumed run neither loses nor duplicates alarms.

Alarms are forced: `length_max_drift: -1` with a window of one row makes any change of the mean
response length "drift", so length_drift fires at the second row carrying response/length (eval
rows: steps 2, 4, 6), whatever the tiny model learns. (ORPO has no kl/mean: no reference model.)"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny_model, crash_at_save, write_jsonl
from safetensors.torch import load_file
from test_dpo_recipe import random_comparisons

from rlhfkit.config import load_config
from rlhfkit.monitor.alarms import read_alarms, scan
from rlhfkit.recipes import kto, orpo
from rlhfkit.train.run_dir import read_metrics

RECIPES = {"kto": (kto, kto.KTOConfig), "orpo": (orpo, orpo.ORPOConfig)}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("kto_orpo_monitor")
    return {"model": build_tiny_model(d / "m"), "train": write_jsonl(d / "train.jsonl", random_comparisons(16, seed=0)),
            "prompts": write_jsonl(d / "prompts.jsonl", [{"prompt": p} for p in ("the movie", "i liked", "the plot was")])}


def _cfg(recipe, files, *extra):
    return load_config(RECIPES[recipe][1], None, [
        f"model.name_or_path={files['model']}", f"data.train={files['train']}", "data.eval=null",
        f"sampling.prompts={files['prompts']}", "sampling.max_new_tokens=6", "sampling.gold=false", "sampling.text=null",
        "train.batch_size=8", "train.micro_batch_size=8", "train.lr=2e-2", "train.max_steps=6", "train.warmup_ratio=0",
        "train.schedule=constant", "log.eval_every=2", "log.save_every=2", "log.keep_checkpoints=10",
        "log.progress=false", "monitor.alarms=[length_drift]", "monitor.window=1", "monitor.min_points=1",
        "monitor.length_max_drift=-1", *extra])


def _run(recipe, cfg, out, resume=False):
    return RECIPES[recipe][0].run(cfg, out, resume=resume)


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _alarms(run):
    return [(a.name, a.step, a.action) for a in read_alarms(run / "alarms.jsonl")]


@pytest.fixture(scope="module", params=list(RECIPES))
def warn_run(request, files, tmp_path_factory):
    """The reference run per recipe: action warn (the default), checkpoints at steps 2 and 4."""
    cfg = _cfg(request.param, files)
    out = tmp_path_factory.mktemp(f"warn_{request.param}") / "run"
    _run(request.param, cfg, out)
    return request.param, cfg, out


def test_default_proxy_is_the_implied_reward_margin():
    assert kto.KTOConfig().monitor.proxy_key == orpo.ORPOConfig().monitor.proxy_key == "rewards/margin"


def test_warn_logs_the_alarms_an_offline_scan_finds_and_goes_on(warn_run):
    recipe, cfg, out = warn_run
    rows = read_metrics(out, recipe)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all("rewards/margin" in r for r in rows)  # the proxy is logged on every row
    assert _alarms(out) == [("length_drift", 4, "warn")]  # 2nd row with response/length
    assert [(a.name, a.step) for a in scan(rows, cfg.monitor)] == [("length_drift", 4)]
    done = json.loads((out / "final" / "run_complete.json").read_text())
    assert done["steps"] == 6 and "stopped_by_alarm" not in done and done["alarms"] == ["length_drift"]


def test_stop_ends_training_at_the_alarm_step(files, warn_run, tmp_path):
    recipe, _, ref = warn_run
    out = tmp_path / "run"
    _run(recipe, _cfg(recipe, files, "monitor.action=stop"), out)
    assert [r["step"] for r in read_metrics(out, recipe)] == [1, 2, 3, 4]
    assert _alarms(out) == [("length_drift", 4, "stop")]
    done = json.loads((out / "final" / "run_complete.json").read_text())
    assert done["stopped_by_alarm"] == "length_drift" and done["stopped_at"] == 4 and done["steps"] == 4
    assert _same(_weights(out / "final"), _weights(ref / "checkpoints" / "step-4" / "policy"))
    assert not _same(_weights(out / "final"), _weights(ref / "final"))


def test_keep_best_final_is_the_best_step(files, warn_run, tmp_path):
    """best = the eval row with the shortest responses; final/ holds that step's weights."""
    recipe, _, ref = warn_run
    out = tmp_path / "run"
    _run(recipe, _cfg(recipe, files, "monitor.action=keep_best", "monitor.best_metric=response/length",
                      "monitor.best_mode=min"), out)
    rows = read_metrics(out, recipe)
    best_value, best_step = min((r["response/length"], r["step"]) for r in rows if "response/length" in r)
    done = json.loads((out / "final" / "run_complete.json").read_text())
    assert done["best_step"] == done["final_step"] == best_step and done["best_value"] == pytest.approx(best_value)
    if best_step != 6:
        assert _same(_weights(out / "final"), _weights(ref / "checkpoints" / f"step-{best_step}" / "policy"))
    assert _same(_weights(out / "final"), _weights(out / "best"))


def test_resume_neither_loses_nor_duplicates_alarms(files, warn_run, tmp_path):
    """Crash at step 5 before its checkpoint: the run resumes from step 4, the step-4 alarm is
    replayed (latched, not logged again): the file ends as in the uninterrupted run, and so do
    the weights."""
    recipe, _, ref = warn_run
    with crash_at_save(5, written=False):
        _run(recipe, _cfg(recipe, files, "log.save_every=1"), tmp_path / "cut")
    assert [r["step"] for r in read_metrics(tmp_path / "cut", recipe)] == [1, 2, 3, 4, 5]
    resumed = _run(recipe, _cfg(recipe, files, "log.save_every=1"), tmp_path / "cut", resume=True)
    assert _alarms(tmp_path / "cut") == _alarms(ref) == [("length_drift", 4, "warn")]
    assert [r["step"] for r in read_metrics(tmp_path / "cut", recipe)] == [1, 2, 3, 4, 5, 6]
    a, b = _weights(ref / "final"), _weights(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
