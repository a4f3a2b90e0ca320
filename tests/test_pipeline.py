"""The pipeline: stages wired end to end on the lab; killed during PPO, re-run finishes the run
without redoing completed stages; a stage whose resolved config changed runs again, with the
stages that use its output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import build_tiny_model, random_demos, write_jsonl
from test_dpo_recipe import random_comparisons

from rlhfkit.config import ConfigError, load_config
from rlhfkit.pipeline import stages as pipeline
from rlhfkit.pipeline.stages import PipelineConfig, StageConfig, stage_config, wiring
from rlhfkit.verbs import VERBS

SMALL = {
    "model": "lab",
    "stages": [
        {"name": "sft", "config": {"train": {"max_steps": 4, "batch_size": 16, "micro_batch_size": 16},
                                   "log": {"progress": False, "eval_every": 0}}},
        {"name": "compare", "config": {"limit": 24, "k": 3, "sampling": {"max_new_tokens": 24}}},
        {"name": "reward", "config": {"train": {"max_steps": 4, "batch_size": 8, "micro_batch_size": 8},
                                      "normalize": {"num_prompts": 16, "max_new_tokens": 24},
                                      "log": {"progress": False}}},
        {"name": "ppo", "config": {"train": {"max_steps": 12, "batch_size": 8, "micro_batch_size": 8},
                                   "rollout": {"max_new_tokens": 16}, "eval": {"examples": 8},
                                   "log": {"save_every": 1, "eval_every": 0, "progress": False}}},
        {"name": "dpo", "config": {"train": {"max_steps": 3, "batch_size": 8, "micro_batch_size": 8},
                                   "log": {"progress": False, "eval_every": 0}}},
        {"name": "eval"},
    ],
    "eval": {"num_prompts": 8, "max_new_tokens": 16, "text_examples": 8, "best_of_n": [1, 2], "show_samples": 2},
}


def test_wiring_feeds_each_stage_from_the_ones_before(tmp_path):
    done = {"sft": tmp_path / "sft/final", "compare": tmp_path / "compare/comparisons.jsonl", "reward": tmp_path / "reward/final"}
    assert wiring("ppo", "lab", done) == {"model": {"name_or_path": str(done["sft"])}, "reward": {"source": str(done["reward"])}}
    assert wiring("reward", "lab", done)["data"] == {"train": str(done["compare"])}
    # No reward stage: PPO's own reward.source decides (auto = lab:gold for lab models only).
    assert wiring("ppo", "base-model", {}) == {"model": {"name_or_path": "base-model"}}
    # The stage's own config beats the wiring.
    _, cfg = stage_config(StageConfig("ppo", config={"reward": {"source": "lab:gold"}}), "lab", done)
    assert cfg.reward.source == "lab:gold" and cfg.model.name_or_path == str(done["sft"])


def test_stage_config_errors_name_the_stage():
    with pytest.raises(ConfigError, match=r"stage 'ppo': unknown config key 'train.lrr'"):
        stage_config(StageConfig("ppo", config={"train": {"lrr": 1}}), "lab", {})
    with pytest.raises(ConfigError, match="unknown recipe 'ppx'"):
        pipeline._check(load_config(PipelineConfig, None, (), base={"stages": [{"name": "ppx"}]}))
    with pytest.raises(ConfigError, match="plain folder name"):  # the pipeline may delete a stage's folder
        pipeline._check(load_config(PipelineConfig, None, (), base={"stages": [{"name": "..", "recipe": "sft"}]}))


def test_demo_config_resolves():
    from rlhfkit.pipeline.demo import demo_config_path

    cfg = load_config(PipelineConfig, demo_config_path())
    for stage in cfg.stages:
        if stage.kind != "eval":
            stage_config(stage, "lab", {"sft": Path("x"), "compare": Path("y.jsonl"), "reward": Path("z")})


@pytest.mark.slow
def test_killed_during_ppo_then_rerun_skips_completed_stages(tmp_path, monkeypatch):
    cfg_file = tmp_path / "pipe.yaml"
    cfg_file.write_text(yaml.safe_dump(SMALL))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLHFKIT_PROGRESS": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "rlhfkit.cli", "pipeline", str(cfg_file), "--out", str(out),
                             "--set", "report=false"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 400
    while time.time() < deadline and not list((out / "ppo" / "checkpoints").glob("step-*")):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)  # killed mid-PPO: no chance to clean up
    proc.wait()
    assert not (out / "ppo" / "stage_complete.json").exists()
    for name in ("sft", "compare", "reward"):
        assert (out / name / "stage_complete.json").exists()

    def must_not_run(*a, **k):
        raise AssertionError("a completed stage was run again")

    for name in ("sft", "compare", "reward"):
        monkeypatch.setattr(f"{VERBS[name].module}.run", must_not_run)
    cfg = load_config(PipelineConfig, cfg_file)
    pipeline.run(cfg, out)
    steps = [json.loads(x)["step"] for x in (out / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # resumed PPO: every step once
    assert (out / "ppo" / "stage_complete.json").exists() and (out / "dpo" / "final").is_dir()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"base", "sft", "ppo", "dpo"}
    assert all("gold/mean" in m and "kl/mean" in m for m in summary.values())
    frontier = json.loads((out / "frontier.json").read_text())
    assert {p["method"] for p in frontier} == {"sft", "ppo", "dpo", "best-of-n"}
    assert (out / "report.html").exists()


def _tiny_pipeline(tmp_path, sft_lr: float, dpo_lr: float) -> PipelineConfig:
    """sft -> dpo on a tiny non-lab model and data, one step each, nothing optional."""
    if not (tmp_path / "base").exists():
        build_tiny_model(tmp_path / "base")
        write_jsonl(tmp_path / "demos.jsonl", random_demos(8))
        write_jsonl(tmp_path / "comparisons.jsonl", random_comparisons(4))
    quiet = {"progress": False, "eval_every": 0, "save_every": 0}
    one_step = {"max_steps": 1, "batch_size": 4, "micro_batch_size": 4}
    return load_config(PipelineConfig, None, (), base={"model": str(tmp_path / "base"), "report": False, "stages": [
        {"name": "sft", "config": {"data": {"train": str(tmp_path / "demos.jsonl"), "eval": None},
                                   "train": {**one_step, "lr": sft_lr}, "log": quiet}},
        {"name": "dpo", "config": {"data": {"train": str(tmp_path / "comparisons.jsonl")},
                                   "sampling": {"prompts": None, "text": None},
                                   "train": {**one_step, "lr": dpo_lr}, "log": quiet}},
    ]})


def test_a_changed_stage_runs_again_with_the_stages_downstream(tmp_path, monkeypatch, capsys):
    """Today's bug: `[pipeline] ppo: complete, skipped` after its lr changed. The resolved config
    is recorded; a changed stage reruns (saying which keys changed), and so does every later stage
    whose config names its folder; unchanged stages are skipped."""
    from rlhfkit.recipes import dpo, sft

    calls: list[str] = []
    for name, module in (("sft", sft), ("dpo", dpo)):
        monkeypatch.setattr(module, "run", lambda *a, _f=module.run, _n=name, **k: (calls.append(_n), _f(*a, **k))[1])
    out = tmp_path / "run"

    def run(sft_lr, dpo_lr):
        calls.clear()
        pipeline.run(_tiny_pipeline(tmp_path, sft_lr, dpo_lr), out)
        return list(calls), capsys.readouterr().out

    assert run(1e-3, 1e-3)[0] == ["sft", "dpo"]
    recorded = json.loads((out / "dpo" / "stage_complete.json").read_text())["config"]
    assert recorded["train"]["lr"] == 1e-3 and recorded["model"]["name_or_path"] == str(out / "sft" / "final")

    ran, printed = run(1e-3, 1e-3)
    assert ran == [] and printed.count("complete, skipped") == 2

    ran, printed = run(1e-3, 2e-3)  # only DPO changed: SFT is skipped
    assert ran == ["dpo"]
    assert "[pipeline] dpo: config changed since it ran (train.lr: 0.001 -> 0.002)" in printed

    ran, printed = run(5e-4, 2e-3)  # SFT changed: DPO, whose model is SFT's output, runs again too
    assert ran == ["sft", "dpo"]
    assert "[pipeline] sft: config changed since it ran (train.lr: 0.001 -> 0.0005)" in printed
    assert "[pipeline] dpo: its input stage sft ran again" in printed

    # An interrupted stage (no stage_complete.json) whose config changed starts from scratch
    # instead of resuming another config's checkpoints.
    (out / "dpo" / "stage_complete.json").unlink()
    (out / "dpo" / "leftover").write_text("from the old config")
    ran, printed = run(5e-4, 3e-3)
    assert ran == ["dpo"] and "dpo: config changed since it ran" in printed
    assert not (out / "dpo" / "leftover").exists()
