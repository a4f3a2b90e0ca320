"""Reward models with LoRA (peft task SEQ_CLS): only the backbone's adapters and the scalar head
train, final/ is a merged plain `AutoModelForSequenceClassification` that scores like the adapter
model (normalisation included), resume is exact, and ensemble members each get their own adapters."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny_model, build_word_tokenizer, crash_at_save, write_jsonl
from test_reward_recipe import comparisons
from transformers import AutoModelForSequenceClassification

from rlhfkit.config import LoRAConfig, ModelConfig, load_config
from rlhfkit.models import loading
from rlhfkit.models.reward import (
    build_reward_model,
    collate_rows,
    forward_rewards,
    load_reward_model,
    reward_head,
)
from rlhfkit.recipes import reward

LORA = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8"]


@pytest.fixture
def data(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", comparisons(64, 3, 0))
    held = write_jsonl(tmp_path / "eval.jsonl", comparisons(16, 3, 1))
    return train, held


def _cfg(model, train, held, *extra):
    return load_config(reward.RewardConfig, None, [
        f"model.name_or_path={model}", f"data.train={train}", f"data.eval={held}", "train.batch_size=8",
        "train.micro_batch_size=4", "train.lr=1e-2", "train.max_steps=6", "train.warmup_ratio=0.0",
        "log.save_every=3", "log.eval_every=3", "log.progress=false", "normalize.source=eval_data", *LORA, *extra])


def _metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _held_texts(held):
    rows = [json.loads(x) for x in held.read_text().splitlines()]
    return [r["prompt"] for r in rows for _ in r["responses"]], [x for r in rows for x in r["responses"]]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_only_adapters_and_head_train_and_start_equals_plain_rm(tmp_path, arch):
    """B = 0 at init and peft's head copy starts as the seeded head, so the LoRA RM scores exactly
    like the plain RM built with the same seed; trainable = lora_A/B + the head copy, nothing else."""
    folder = build_tiny_model(tmp_path / "m", arch)
    tok = build_word_tokenizer(tmp_path / "tok")
    lora = ModelConfig(name_or_path=str(folder), lora=LoRAConfig(enabled=True, r=4))
    model = build_reward_model(lora, tok.pad_token_id, seed=5)
    plain = build_reward_model(ModelConfig(name_or_path=str(folder)), tok.pad_token_id, seed=5)
    assert loading.is_peft(model) and not loading.is_peft(plain)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    heads = [n for n in trainable if "lora_" not in n]
    assert any("lora_" in n for n in trainable)
    assert heads == ["base_model.model.score.modules_to_save.default.weight"]
    torch.testing.assert_close(reward_head(model).weight, reward_head(plain).weight, rtol=0, atol=0)
    ids, mask = collate_rows([[3, 4, 5, 1], [6, 7, 1]], tok.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(forward_rewards(model, ids, mask), forward_rewards(plain, ids, mask))
    # An explicit path (e.g. scoring a saved folder) stays plain.
    assert not loading.is_peft(build_reward_model(lora, tok.pad_token_id, path=str(folder)))


def test_lora_rm_learns_and_final_is_merged_plain_classifier(tmp_path, data):
    model_dir = build_tiny_model(tmp_path / "m")
    out = reward.run(_cfg(model_dir, *data, "train.max_steps=16", "log.save_every=0", "log.eval_every=8"),
                     tmp_path / "run")
    rows = _metrics(tmp_path / "run")
    assert len(rows) == 16
    first, last = rows[0]["loss/reward"], sum(r["loss/reward"] for r in rows[-4:]) / 4
    assert last < first - 0.05, (first, last)
    assert (out / "adapter" / "adapter_model.safetensors").exists() and (out / "model.safetensors").exists()

    merged = AutoModelForSequenceClassification.from_pretrained(out)  # plain transformers, no peft
    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    m, b = merged.state_dict(), base.state_dict()
    assert set(m) == set(b) and merged.config.num_labels == 1
    assert not torch.equal(m["transformer.h.0.attn.c_attn.weight"], b["transformer.h.0.attn.c_attn.weight"])
    torch.testing.assert_close(m["transformer.wte.weight"], b["transformer.wte.weight"], rtol=0, atol=0)

    # The adapter model rebuilt from final/adapter/ and the merged folder give the same raw rewards.
    cfg = _cfg(model_dir, *data)
    tok = loading.load_tokenizer(cfg.model)
    adapted = build_reward_model(cfg.model, tok.pad_token_id, seed=cfg.train.seed)
    loading.load_weights(adapted, out)
    prompts, responses = _held_texts(data[1])
    rm = load_reward_model(out, normalize=False)
    raw = rm.score(prompts, responses).rewards
    ids, mask = collate_rows(rm.encode(prompts, responses), tok.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(raw, forward_rewards(adapted.eval(), ids, mask), rtol=1e-4, atol=1e-4)
    # Normalisation was computed on the merged model: the held-out responses score mean 0, std 1.
    norm = load_reward_model(out).score(prompts, responses).rewards.double()
    assert norm.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert norm.std(correction=0).item() == pytest.approx(1.0, abs=1e-3)
    assert raw.std().item() > 1e-3  # the scores are not a constant


def test_lora_rm_resume_matches_uninterrupted_run(tmp_path, data):
    model_dir = build_tiny_model(tmp_path / "m")
    full = reward.run(_cfg(model_dir, *data), tmp_path / "full")
    cfg = _cfg(model_dir, *data)
    with crash_at_save(3):
        reward.run(cfg, tmp_path / "cut")
    assert (tmp_path / "cut" / "checkpoints" / "step-3" / "reward" / "adapter" / "adapter_model.safetensors").exists()
    resumed = reward.run(cfg, tmp_path / "cut", resume=True)
    a = AutoModelForSequenceClassification.from_pretrained(full).state_dict()
    b = AutoModelForSequenceClassification.from_pretrained(resumed).state_dict()
    head = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1).state_dict()
    assert not torch.equal(a["score.weight"], head["score.weight"])  # sanity: the head is not the fresh HF one
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    assert [r["step"] for r in _metrics(tmp_path / "cut")] == [1, 2, 3, 4, 5, 6]


def test_lora_ensemble_members_have_their_own_adapters(tmp_path, data):
    model_dir = build_tiny_model(tmp_path / "m")
    out = reward.run(_cfg(model_dir, *data, "ensemble.members=2", "train.max_steps=3", "log.save_every=0"),
                     tmp_path / "run")
    members = [out / "member-0", out / "member-1"]
    for mdir in members:
        assert (mdir / "adapter" / "adapter_model.safetensors").exists()
    w = [AutoModelForSequenceClassification.from_pretrained(mdir).state_dict() for mdir in members]
    assert not torch.equal(w[0]["score.weight"], w[1]["score.weight"])  # seeds differ
    assert not torch.equal(w[0]["transformer.h.0.attn.c_attn.weight"], w[1]["transformer.h.0.attn.c_attn.weight"])
    scores = load_reward_model(out).score(*_held_texts(data[1]))
    assert scores.members.shape[0] == 2 and scores.std.max().item() > 0
