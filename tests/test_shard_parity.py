"""Sharded training (train.sharding=fsdp: FSDP2 over 2 gloo processes on CPU) matches one plain
process with the same global batch, for every recipe family: sft, reward, dpo, ppo (full and LoRA)
and grpo. The recipes are unchanged; only the session's accelerator shards.

What is compared, and with which bounds, is what the DDP parity tests compare (see
test_reward_distributed for why not the final weights): the per-step losses and the step-1 gradient,
Adam's first moment in the step-1 checkpoint. Sharding changes only where sums happen: each process
reduce-scatters every micro-batch's gradient (the sum of the two processes' micro-batch k, halved:
exact for two terms and a power of two) and accumulates the shards over its micro-batches, so the M
micro-batch gradients are again summed in another order — the same `first_gradient_atol(M)` reading
— and the clipping norm is a sum of squares over shards, reassociated likewise (covered by the
same second term there). The sharded step-1 moments are read from the torch.distributed.checkpoint
shards (`shard.read_sharded`), in the optimizer's parameter order, which is the plain checkpoint's.

Also exercised on the way: evaluations over uneven shares (15 held-out demonstrations, 5 held-out
pairs) and generation (DPO's sampled evaluation, every online step) inside `shard.gathered`, a
frozen sharded reference and reward model, the full final/ gathered from the shards.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model, random_demos, torchrun, write_jsonl
from test_dpo_distributed import dpo_first_gradient_atol
from test_dpo_recipe import random_comparisons
from test_ppo_distributed import ROLLOUT_KEYS, _reward_model, ppo_first_gradient_atol
from test_reward_distributed import FIRST_STEP_SAVED, first_gradient_atol
from test_reward_recipe import comparisons
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhfkit.train.checkpoint import load_tree
from rlhfkit.train.shard import SHARDED_DIR, read_sharded

SHARDED = ["train.sharding=fsdp"]


def first_moments(run: Path) -> list[torch.Tensor]:
    """Adam's exp_avg after step 1, one tensor per parameter in the optimizer's order, from a plain
    checkpoint (state keyed by position) or a sharded one (keyed by name; the param groups list
    the names in the same order)."""
    ckpt = Path(run) / "checkpoints" / "step-1"
    if (ckpt / SHARDED_DIR).is_dir():
        tensors = read_sharded(ckpt / SHARDED_DIR)
        groups = load_tree(ckpt / SHARDED_DIR, "param_groups")
        return [tensors[f"optim/{name}/exp_avg"] for g in groups for name in g["params"]]
    state = load_tree(ckpt, "optimizer")
    return [state["state"][i]["exp_avg"] for g in state["param_groups"] for i in g["params"]]


def assert_moments_match(one: Path, two: Path, atol: float) -> None:
    a, b = first_moments(one), first_moments(two)
    assert len(a) == len(b) and a
    scale = max(m.abs().max().item() for m in a)
    assert scale > 0
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        torch.testing.assert_close(y.view_as(x), x, rtol=0, atol=atol * scale, msg=f"parameter {i}")


def assert_losses_match(one: list[dict], two: list[dict], key: str) -> None:
    """Step 1's loss: the same M non-negative (or same-sign) micro-batch terms summed in another order,
    ≤ 2(M − 1)·U relative each way, under rel 1e-6 for M ≤ 8. Later steps follow Adam's updates,
    where float noise enters (measured ≤ 1e-6 relative in the DDP tests), rel 1e-4 / abs 1e-5; a
    shard seen twice or a normaliser off by the process count moves them by ≥ 1e-2."""
    assert len(one) == len(two)
    assert one[0][key] == pytest.approx(two[0][key], rel=1e-6, abs=1e-7)
    for a, b in zip(one, two, strict=True):
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (a["step"], key)


def _both(verb: str, args: list[str], tmp_path: Path) -> tuple[list[dict], list[dict]]:
    """The plain run in this process (no launcher start-up: the tests stay short), the sharded one
    under torchrun."""
    from rlhfkit.cli import main

    assert main([verb, "--out", str(tmp_path / "one"), *[x for a in args for x in ("--set", a)]]) == 0
    one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    two = torchrun(verb, 2, tmp_path / "two", [*args, *SHARDED])
    assert (tmp_path / "two" / "checkpoints" / "step-1" / SHARDED_DIR).is_dir()  # it did run sharded
    return one, two


@pytest.mark.slow
def test_sft(tmp_path):
    model = build_tiny_model(tmp_path / "m")
    train = write_jsonl(tmp_path / "train.jsonl", random_demos(48, 0))
    held = write_jsonl(tmp_path / "eval.jsonl", random_demos(15, 1))  # odd: uneven shares, gathered
    one, two = _both("sft", [f"model.name_or_path={model}", f"data.train={train}", f"data.eval={held}",
                             "train.batch_size=8", "train.micro_batch_size=2", "train.lr=1e-2", "train.max_steps=3",
                             "log.progress=false", "log.eval_every=1", *FIRST_STEP_SAVED], tmp_path)
    assert_losses_match(one, two, "loss/sft")
    for a, b in zip(one, two, strict=True):  # a token-weighted mean over 15 examples: like the losses
        assert a["eval/perplexity"] == pytest.approx(b["eval/perplexity"], rel=1e-4)
    assert_moments_match(tmp_path / "one", tmp_path / "two", first_gradient_atol(4))
    # final/ is a plain HF folder gathered from the shards; its weights follow Adam (see above)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "final")
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "final")
    assert plain.state_dict().keys() == ref.state_dict().keys()


@pytest.mark.slow
def test_reward(tmp_path):
    model = build_tiny_model(tmp_path / "m")
    train = write_jsonl(tmp_path / "train.jsonl", comparisons(48, 3, 0))
    held = write_jsonl(tmp_path / "held.jsonl", comparisons(16, 3, 1))
    one, two = _both("reward", [f"model.name_or_path={model}", f"data.train={train}", f"data.eval={held}",
                                "train.batch_size=8", "train.micro_batch_size=2", "train.lr=3e-3", "train.max_steps=3",
                                "log.progress=false", "log.eval_every=0", "normalize.source=eval_data",
                                *FIRST_STEP_SAVED], tmp_path)
    assert_losses_match(one, two, "loss/reward")
    assert_moments_match(tmp_path / "one", tmp_path / "two", first_gradient_atol(4))
    rm = AutoModelForSequenceClassification.from_pretrained(tmp_path / "two" / "final")
    assert rm.score.weight.shape[0] == 1


@pytest.mark.slow
def test_dpo(tmp_path):
    """The reference log-probs are computed before sharding (cached table); a separate reference is
    kept, sharded, for the sampled evaluation's KL, which generates inside `gathered`."""
    model = build_tiny_model(tmp_path / "m")
    train = write_jsonl(tmp_path / "train.jsonl", random_comparisons(16, seed=0))
    held = write_jsonl(tmp_path / "eval.jsonl", random_comparisons(5, seed=1))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": d["prompt"]} for d in random_demos(3, 2)])
    one, two = _both("dpo", [f"model.name_or_path={model}", f"data.train={train}", f"data.eval={held}",
                             f"sampling.prompts={prompts}", "sampling.text=null", "sampling.max_new_tokens=4",
                             "train.batch_size=8", "train.micro_batch_size=2", "train.lr=1e-2", "train.max_steps=3",
                             "beta=0.5", "log.progress=false", "log.eval_every=1", *FIRST_STEP_SAVED], tmp_path)
    assert_losses_match(one, two, "loss/dpo")
    for a, b in zip(one, two, strict=True):  # the whole held-out set as one batch (see assert_losses_match)
        assert a["eval/loss"] == pytest.approx(b["eval/loss"], rel=1e-4, abs=1e-5)
        assert "kl/mean" in b and "response/length" in b  # sampled with the rank split: other samples
    assert_moments_match(tmp_path / "one", tmp_path / "two", dpo_first_gradient_atol(4))


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_ppo(tmp_path, lora):
    """Policy and critic under one optimizer, both sharded; the reward model and the reference
    (full: a separate model; LoRA: the policy with adapters off) frozen and sharded. Bounds as in
    test_ppo_distributed: rollout metrics of step 1, the step-1 gradients."""
    model = build_tiny_model(tmp_path / "m")
    rm = _reward_model(model, tmp_path / "rm")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": d["prompt"]} for d in random_demos(16, 0)])
    args = [f"model.name_or_path={model}", f"data.prompts={prompts}", f"reward.source={rm}", "eval.text=null",
            "train.batch_size=8", "train.micro_batch_size=2", "rollout.generate_batch_size=2",
            "rollout.max_new_tokens=5", "train.max_steps=2", "ppo.ppo_epochs=2", "ppo.whiten_rewards=true",
            "train.lr=1e-2", "log.progress=false", *FIRST_STEP_SAVED]
    if lora:
        args += ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8", "train.lr=3e-2"]
    one, two = _both("ppo", args, tmp_path)
    for key in ROLLOUT_KEYS:
        assert one[0][key] == pytest.approx(two[0][key], rel=1e-4, abs=1e-5), key
    assert_moments_match(tmp_path / "one", tmp_path / "two", ppo_first_gradient_atol(4, 8 * 5))
    assert (tmp_path / "two" / "final" / "critic" / "config.json").exists()


def char_count(prompts, responses):
    return [float(len(r)) for r in responses]


@pytest.mark.slow
def test_grpo(tmp_path):
    """Groups of 4 stay in one process; micro-batches of one response (M = 8), as test_grpo_distributed."""
    model = build_tiny_model(tmp_path / "m")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": d["prompt"]} for d in random_demos(16, 0)])
    one, two = _both("grpo", [f"model.name_or_path={model}", f"data.prompts={prompts}",
                              f"reward.source={__name__}:char_count", "eval.text=null", "eval.gold=none",
                              "train.batch_size=8", "train.micro_batch_size=1", "rollout.group_size=4",
                              "rollout.generate_batch_size=4", "rollout.max_new_tokens=5", "train.max_steps=2",
                              "train.lr=1e-2", "log.progress=false", *FIRST_STEP_SAVED], tmp_path)
    for key in ROLLOUT_KEYS:
        assert one[0][key] == pytest.approx(two[0][key], rel=1e-4, abs=1e-5), key
    assert one[0]["reward/std"] > 0
    assert_moments_match(tmp_path / "one", tmp_path / "two", first_gradient_atol(8))
