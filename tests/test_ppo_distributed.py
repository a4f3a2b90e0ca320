"""PPO with 2 processes (gloo, CPU) matches 1 process with the same global batch: each process
samples its shard with seeds from the prompts' global batch positions (so both runs sample the
same responses), the reward model scores each shard (placed, not wrapped for training), the
advantages are whitened over the global batch, and the losses are normalised by the global token
count. Full fine-tuning and LoRA (reference = the DDP-wrapped policy's base, adapters off)."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_model, random_demos, torchrun, write_jsonl
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

# Not policy/clipfrac: a per-micro-batch token fraction averaged by rows, so it depends on how the
# (length-sorted) rows fall into micro-batches, which differs between 1 and 2 processes.
KEYS = ("reward/mean", "response/length", "response/eos_rate", "kl/mean", "kl/beta", "reward/total", "loss/policy",
        "loss/value", "policy/entropy", "train/grad_norm_policy", "train/grad_norm_critic")


def _reward_model(model, folder):
    """A tiny RM: the policy's backbone with a random scalar head."""
    rm = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1)
    rm.config.pad_token_id = 0
    torch.manual_seed(1)
    with torch.no_grad():
        rm.score.weight.normal_(std=2.0)
    rm.save_pretrained(folder)
    AutoTokenizer.from_pretrained(model).save_pretrained(folder)
    return folder


def _launch(nproc: int, args: list[str], out) -> list[dict]:
    return torchrun("ppo", nproc, out, args)


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_two_processes_match_one(tmp_path, lora):
    model = build_tiny_model(tmp_path / "m")
    rm = _reward_model(model, tmp_path / "rm")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": d["prompt"]} for d in random_demos(16, 0)])
    args = [f"model.name_or_path={model}", f"data.prompts={prompts}", f"reward.source={rm}", "eval.text=null",
            "train.batch_size=8", "train.micro_batch_size=2", "rollout.generate_batch_size=2",
            "rollout.max_new_tokens=5", "train.max_steps=3", "ppo.ppo_epochs=2", "ppo.whiten_rewards=true",
            "ppo.kl_target=0.1", "ppo.kl_horizon=50", "train.lr=1e-2", "log.progress=false", "log.save_every=0"]
    if lora:
        args += ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8", "train.lr=3e-2"]
    one = _launch(1, args, tmp_path / "one")
    two = _launch(2, args, tmp_path / "two")
    assert len(one) == len(two) == 3
    for a, b in zip(one, two, strict=True):
        for key in KEYS:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (a["step"], key)
    assert one[-1]["kl/mean"] > 1e-3  # the policy did move away from the reference
    for part in ("model.safetensors", "critic/model.safetensors"):
        wa, wb = (load_file(str(tmp_path / d / "final" / part)) for d in ("one", "two"))
        assert wa.keys() == wb.keys()
        for k in wa:
            # Adam normalises each gradient element, so float-order noise in near-zero gradients moves
            # those weights by up to ~lr * 1e-2; real disagreements (a wrong normaliser) are ~lr.
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=3e-4)
