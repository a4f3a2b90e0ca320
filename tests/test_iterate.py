"""Iterative RLHF on tiny models: R rounds of (label the current policy's samples -> RM on all
labels so far -> PPO from the current policy), each round in its own folder, resumable."""

from __future__ import annotations

import itertools
import json

import pytest
from conftest import build_tiny_model, write_jsonl

from rlhfkit.config import ConfigError, load_config, replace
from rlhfkit.feedback.base import Judgement
from rlhfkit.pipeline.iterate import IterateConfig, round_configs, run


class GreatCounter:
    """Ranks responses by how often they say 'great' (ties by order): a deterministic annotator."""

    name = "great-counter"

    def rank(self, prompt, responses):
        scores = [r.split().count("great") - 0.01 * i for i, r in enumerate(responses)]
        return Judgement(sorted(range(len(responses)), key=lambda i: -scores[i]), scores)


def great_counter():
    return GreatCounter()


def _cfg(tmp_path, rounds, budget):
    model = build_tiny_model(tmp_path / "m")
    words = ["the", "a", "movie", "film", "plot", "acting", "story", "cast"]
    unique = [f"{a} {b} was" for a, b in itertools.product(words, words)][:48]  # 48 distinct prompts
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in unique])
    return load_config(IterateConfig, None, [
        f"policy.name_or_path={model}", f"prompts={prompts}", f"rounds={rounds}", f"label_budget={budget}",
        "eval.prompts=null",
        f"compare.annotator.name={__name__}:great_counter", "compare.k=2", "compare.sampling.max_new_tokens=6",
        "reward.normalize.source=none", "reward.data.eval_fraction=0", "reward.train.batch_size=4",
        "reward.train.micro_batch_size=4", "reward.train.epochs=1", "reward.log.progress=false", "reward.data.gold=none",
        f"ppo.data.prompts={prompts}", "ppo.eval.text=null", "ppo.train.max_steps=2", "ppo.train.batch_size=8",
        "ppo.train.micro_batch_size=8", "ppo.rollout.max_new_tokens=6", "ppo.log.progress=false", "ppo.log.save_every=0",
        "ppo.critic.init=reward",
    ])


def test_two_rounds_wire_policy_rm_and_labels(tmp_path):
    cfg = _cfg(tmp_path, rounds=2, budget=16)
    out = tmp_path / "run"
    final = run(cfg, out)
    for r in (1, 2):
        rd = out / f"round-{r}"
        assert (rd / "rm" / "final" / "config.json").exists()
        assert (rd / "ppo" / "final" / "model.safetensors").exists()
    # round 2 labels the round-1 policy's samples, and its RM sees both rounds' labels
    n1 = len((out / "round-1" / "comparisons.jsonl").read_text().splitlines())
    n2 = len((out / "round-2" / "comparisons.jsonl").read_text().splitlines())
    assert len((out / "round-2" / "all_comparisons.jsonl").read_text().splitlines()) == n1 + n2
    prompts1 = {json.loads(x)["prompt"] for x in (out / "round-1" / "comparisons.jsonl").read_text().splitlines()}
    prompts2 = {json.loads(x)["prompt"] for x in (out / "round-2" / "comparisons.jsonl").read_text().splitlines()}
    assert prompts1 and prompts2 and prompts1.isdisjoint(prompts2)  # each round labels fresh prompts
    _, _, ppo2 = round_configs(cfg, 2, out, str(out / "round-1" / "ppo" / "final"))
    assert ppo2.model.name_or_path.endswith("round-1/ppo/final")
    assert ppo2.ref_model == cfg.policy.name_or_path  # KL always to the SFT model
    assert ppo2.reward.source.endswith("round-2/rm/final")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["stage"] == "iterate"] == [1, 2]
    assert (final / "model.safetensors").exists()
    # resuming a finished run redoes nothing and logs nothing twice
    mtime = (out / "round-2" / "ppo" / "final" / "model.safetensors").stat().st_mtime
    run(cfg, out, resume=True)
    assert (out / "round-2" / "ppo" / "final" / "model.safetensors").stat().st_mtime == mtime
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["stage"] == "iterate"] == [1, 2]
    # resuming with another config is refused, and the run's config.yaml stays the one it ran with
    config_yaml = (out / "config.yaml").read_text()
    changed = replace(cfg, ppo=replace(cfg.ppo, train=replace(cfg.ppo.train, lr=cfg.ppo.train.lr * 3)))
    with pytest.raises(ConfigError, match="ppo.train.lr"):
        run(changed, out, resume=True)
    assert (out / "config.yaml").read_text() == config_yaml


def test_round_configs_wire_rm_mode(tmp_path):
    """retrain: every round's RM starts from the SFT model; continue: from the previous round's RM.
    Either way reward 0 is defined by SFT samples (a classifier cannot sample)."""
    from rlhfkit.config import replace

    cfg = load_config(IterateConfig, None, ["policy.name_or_path=/sft"])
    out = tmp_path / "run"
    _, rm1, _ = round_configs(cfg, 1, out, "/sft")
    _, rm2, _ = round_configs(cfg, 2, out, str(out / "round-1" / "ppo" / "final"))
    assert rm1.model.name_or_path == rm2.model.name_or_path == "/sft"
    cont = replace(cfg, rm_mode="continue")
    _, rm2c, _ = round_configs(cont, 2, out, str(out / "round-1" / "ppo" / "final"))
    assert rm2c.model.name_or_path == str(out / "round-1" / "rm" / "final")
    assert rm2c.normalize.policy == "/sft"
    assert rm2c.data.train == str(out / "round-2" / "all_comparisons.jsonl")
