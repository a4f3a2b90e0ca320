"""PPO with LoRA: the reference is the policy with its adapters off (one copy of the base weights),
only adapters (and the critic's head) train, KL is 0 before the first update, final/ is the merged
model plain transformers loads, and an interrupted + resumed run equals the uninterrupted one."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import build_tiny_model, random_demos, write_jsonl
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhfkit.config import load_config
from rlhfkit.experience import build_rollout, forward_window, response_logits
from rlhfkit.models.loading import AdapterDisabled
from rlhfkit.models.value import token_values, value_head
from rlhfkit.recipes.online import load_models
from rlhfkit.recipes.ppo import PPOConfig, run

LORA = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8"]


def count_great(prompts, responses):
    return [r.split().count("great") / 4 for r in responses]


def _cfg(model, prompts, *overrides):
    return load_config(PPOConfig, None, [
        f"model.name_or_path={model}", f"data.prompts={prompts}", "eval.text=null", "log.progress=false",
        f"reward.source={__name__}:count_great", "train.batch_size=16", "train.micro_batch_size=8",
        "rollout.max_new_tokens=6", *LORA, *overrides])


def test_lora_reference_is_the_base_without_a_second_copy(tmp_path):
    model = build_tiny_model(tmp_path / "m")
    policy, ref, critic = load_models(_cfg(model, "unused.jsonl"))
    assert isinstance(ref, AdapterDisabled)
    # Only adapters train in the policy; adapters and the score head (peft modules_to_save) in the critic.
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    critic_trainable = [n for n, p in critic.named_parameters() if p.requires_grad]
    assert any("score" in n for n in critic_trainable)
    assert all("lora_" in n or "score.modules_to_save" in n for n in critic_trainable)
    # One copy of the base weights for policy + reference: the reference's tensors are the policy's.
    base = AutoModelForCausalLM.from_pretrained(model)
    policy_ptrs = {p.data_ptr() for p in policy.parameters()}
    assert {p.data_ptr() for p in ref.parameters()} <= policy_ptrs
    frozen = sum(p.numel() for p in policy.parameters() if not p.requires_grad)
    assert frozen == sum(p.numel() for p in base.parameters())

    # ref log-probs = the initial policy's = the plain base's; after an adapter update only the policy moves.
    roll = build_rollout([[5, 6, 7], [8, 9]], [[10, 11, 1], [12]], pad=0, device="cpu")
    inputs, r = forward_window(roll, torch.arange(2))
    with torch.no_grad():
        lp_base = response_logits(base, inputs, r, 1.0)
        # (peft's Conv1D path rounds differently from the plain layer: equal up to float noise)
        torch.testing.assert_close(response_logits(policy, inputs, r, 1.0), lp_base, rtol=0, atol=1e-6)
        torch.testing.assert_close(response_logits(ref, inputs, r, 1.0), lp_base, rtol=0, atol=1e-6)
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)
        assert (response_logits(policy, inputs, r, 1.0) - lp_base).abs().max() > 1e-3
        torch.testing.assert_close(response_logits(ref, inputs, r, 1.0), lp_base, rtol=0, atol=1e-6)
    # The critic starts at V = 0 and its head is the one that is wrapped for training.
    assert token_values(critic, inputs["input_ids"], inputs["attention_mask"]).abs().max().item() == 0.0
    assert any(p.requires_grad for p in value_head(critic).parameters())


def test_lora_ppo_kl_starts_at_zero_final_is_merged_and_resume_matches(tmp_path):
    model = build_tiny_model(tmp_path / "m")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": d["prompt"]} for d in random_demos(32, 0)])
    cfg = _cfg(model, prompts, "train.max_steps=4", "log.save_every=2", "train.lr=2e-2", "ppo.ppo_epochs=2",
               "ppo.num_minibatches=2", "critic.lr=2e-2")
    a = tmp_path / "a"
    run(cfg, a)
    rows = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    assert abs(rows[0]["kl/mean"]) < 1e-5  # adapters B = 0: the policy is the reference until the first update
    # ... and the adapters did move it: kl/mean is the k1 estimate on 16 six-token samples, unbiased
    # but noisy (a single step's value can be negative), and exactly 0 only while policy == reference.
    assert max(abs(r["kl/mean"]) for r in rows[1:]) > 1e-4
    # final/ = merged policy and final/critic/ = merged critic, in plain transformers (no peft).
    merged = AutoModelForCausalLM.from_pretrained(a / "final")
    base = AutoModelForCausalLM.from_pretrained(model)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert (merged(input_ids=ids).logits - base(input_ids=ids).logits).abs().max() > 1e-4
    assert (a / "final" / "adapter" / "adapter_model.safetensors").exists()
    critic = AutoModelForSequenceClassification.from_pretrained(a / "final" / "critic")
    assert critic.score.weight.abs().max() > 0  # the trained head, not the frozen zero original
    assert not any("lora_" in k or "modules_to_save" in k for k in load_file(str(a / "final" / "critic" / "model.safetensors")))

    b = tmp_path / "b"
    shutil.copytree(a, b)
    shutil.rmtree(b / "final")
    shutil.rmtree(b / "checkpoints" / "step-4", ignore_errors=True)
    assert [p.name for p in (b / "checkpoints").iterdir()] == ["step-2"]
    assert (b / "checkpoints" / "step-2" / "policy" / "adapter").is_dir()
    run(cfg, b, resume=True)
    for part in ("model.safetensors", "critic/model.safetensors", "adapter/adapter_model.safetensors"):
        wa, wb = load_file(str(a / "final" / part)), load_file(str(b / "final" / part))
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)
    rb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rb] == [1, 2, 3, 4]
    for ra, rb_ in zip(rows, rb, strict=True):
        for k in ("reward/mean", "kl/mean", "loss/policy", "loss/value"):
            assert ra[k] == pytest.approx(rb_[k], rel=1e-5, abs=1e-7), k
