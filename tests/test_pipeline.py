"""The pipeline: stages wired end to end on the lab; killed during PPO, re-run finishes the run
without redoing completed stages."""

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

from rlhfkit.config import ConfigError, load_config
from rlhfkit.recipes import pipeline
from rlhfkit.recipes.pipeline import PipelineConfig, StageConfig, stage_config, wiring

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
    assert wiring("ppo", "base-model", {}) == {"model": {"name_or_path": "base-model"}, "reward": {"source": "lab:gold"}}
    # The stage's own config beats the wiring.
    _, cfg = stage_config(StageConfig("ppo", config={"reward": {"source": "lab:gold"}}), "lab", done)
    assert cfg.reward.source == "lab:gold" and cfg.model.name_or_path == str(done["sft"])


def test_stage_config_errors_name_the_stage():
    with pytest.raises(ConfigError, match=r"stage 'ppo': unknown config key 'train.lrr'"):
        stage_config(StageConfig("ppo", config={"train": {"lrr": 1}}), "lab", {})
    with pytest.raises(ConfigError, match="unknown recipe 'ppx'"):
        pipeline._check(load_config(PipelineConfig, None, (), base={"stages": [{"name": "ppx"}]}))


def test_demo_config_resolves():
    from rlhfkit.recipes.demo import demo_config_path

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

    for module in ("sft", "compare", "reward"):
        monkeypatch.setattr(f"rlhfkit.recipes.{module}.run", must_not_run)
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
