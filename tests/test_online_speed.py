"""The online loop's speed changes keep its numbers: a single on-policy GRPO update takes pi_old's
log-probs and entropy from its own forward (no no-grad policy pass) and logs what the pass would
have given; the time/*_s parts of a step are logged and add up; the optimizer is torch's fused
AdamW except under FSDP sharding."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model, random_demos, write_jsonl

import rlhfkit.experience as experience
import rlhfkit.recipes.online as online
from rlhfkit.config import load_config
from rlhfkit.recipes.grpo import GRPOConfig
from rlhfkit.recipes.grpo import run as run_grpo
from rlhfkit.recipes.ppo import PPOConfig


def char_count(prompts, responses):
    return [float(len(r)) for r in responses]


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().split("\n") if x]


def _grpo(tmp_path: Path, *overrides):
    model = build_tiny_model(tmp_path / "m")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": d["prompt"]} for d in random_demos(32, 0)])
    return load_config(GRPOConfig, None, [
        f"model.name_or_path={model}", f"data.prompts={prompts}", f"reward.source={__name__}:char_count",
        "eval.text=null", "eval.gold=none", "log.progress=false", "log.save_every=0", "train.batch_size=16",
        "train.micro_batch_size=8", "rollout.group_size=4", "rollout.max_new_tokens=6", "train.lr=1e-2",
        "train.max_steps=2", "train.seed=1", *overrides])


@pytest.mark.parametrize("overrides, expected", [
    ((), True), (("algo.ppo_epochs=2",), False), (("algo.num_minibatches=2",), False),
    (("rollout.is_cap=2.0",), False), (("algo.estimator=dr_grpo",), True), (("algo.estimator=rloo",), False)])
def test_old_logps_come_from_the_update_only_for_one_on_policy_update_with_the_kl_in_the_loss(tmp_path, overrides,
                                                                                           expected):
    """Anything that needs pi_old before or apart from the update keeps the no-grad pass: a second
    epoch or minibatch (pi_old is then not the policy being updated), importance weights (computed
    before the update), a KL in the reward (RLOO: the advantages need it)."""
    cfg = _grpo(tmp_path, *overrides)
    assert online._spec(cfg, cfg.algo).old_logps_from_update is expected


def test_on_policy_grpo_logs_what_the_no_grad_pass_would_have(tmp_path, monkeypatch):
    """The same run with the no-grad policy pass (forced) and without it: the policy pass really is
    skipped, the samples are the same (same seed), and old_logps, entropy, KL and the logged
    metrics agree. They differ only by float32 rounding between two forwards of the same weights on
    differently batched rows (micro-batches by length vs in the update's shuffled order): ~1e-7
    relative per log-prob, so 1e-5 on per-token values and rel 1e-4 on the step means (sums of at
    most 6 tokens x 16 rows), which a wrong row or position (log-probs ~ -3.5) would break by far."""
    cfg = _grpo(tmp_path)
    seen, passes = {}, []
    make, nograd = online.make_experience, experience.no_grad_passes

    def spy(*a, **k):
        exp = make(*a, **k)
        seen.setdefault(key, []).append(exp)
        return exp

    def spy_passes(*a, **k):
        passes.append(k.get("policy_pass", True))
        return nograd(*a, **k)

    monkeypatch.setattr(online, "make_experience", spy)
    monkeypatch.setattr(experience, "no_grad_passes", spy_passes)
    key = "update"
    run_grpo(cfg, tmp_path / "update")
    assert passes == [False, False]
    key, passes[:] = "pass", []
    spec = online._spec
    monkeypatch.setattr(online, "_spec", lambda c, a: dataclasses.replace(spec(c, a), old_logps_from_update=False))
    run_grpo(cfg, tmp_path / "pass")
    assert passes == [True, True]
    a, b = seen["update"][0], seen["pass"][0]
    assert a.old_from_update and not b.old_from_update
    assert [s.response_ids for s in a.samples] == [s.response_ids for s in b.samples]
    m = a.roll.response_mask
    assert ((a.old_logps * m) != 0).sum() == m.sum()  # every response token recorded
    for name in ("old_logps", "entropy", "kl"):
        torch.testing.assert_close(getattr(a, name) * m, getattr(b, name) * m, rtol=0, atol=1e-5, msg=name)
    for x, y in zip(_rows(tmp_path / "update")[:1], _rows(tmp_path / "pass")[:1], strict=True):
        for k in ("reward/mean", "kl/mean", "kl/penalty", "policy/entropy", "loss/policy", "loss/kl"):
            assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-6), k
        assert x["policy/clipfrac"] == 0 and x["policy/approx_kl"] == 0  # ratio exactly 1


def test_step_time_parts_are_logged_and_add_up(tmp_path):
    """time/generate_s + reward_s + passes_s <= rollout_s (the rest: building the rows), and
    rollout_s + update_s <= step_s; every part is positive."""
    run_grpo(_grpo(tmp_path), tmp_path / "run")
    for row in _rows(tmp_path / "run"):
        parts = [row[f"time/{k}_s"] for k in ("generate", "reward", "passes", "update")]
        assert all(p > 0 for p in parts)
        assert sum(parts[:3]) <= row["time/rollout_s"] + 1e-6
        assert row["time/rollout_s"] + row["time/update_s"] <= row["time/step_s"] + 1e-6


def test_online_optimizer_is_fused_unless_sharded(tmp_path):
    from transformers import AutoModelForCausalLM

    folder = build_tiny_model(tmp_path / "m")
    policy, critic = (AutoModelForCausalLM.from_pretrained(folder) for _ in range(2))
    cfg = load_config(PPOConfig, None, [f"model.name_or_path={folder}"])
    opt = online._optimizer(cfg, policy, critic, cfg.critic)
    assert opt.defaults["fused"] and all(g["fused"] for g in opt.param_groups)
    opt = online._optimizer(cfg, policy, critic, cfg.critic, fused=False)
    assert not any(g["fused"] for g in opt.param_groups)
