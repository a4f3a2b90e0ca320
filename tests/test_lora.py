"""LoRA through peft: only adapters train, final/ is the merged model (plain transformers) plus
final/adapter/, checkpoints resume exactly, and DPO's reference is the base with adapters off."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import build_tiny_model
from test_dpo_recipe import random_comparisons
from test_sft_recipe import _run_until
from transformers import AutoModelForCausalLM

from rlhfkit.config import LoRAConfig, ModelConfig, load_config
from rlhfkit.models import loading
from rlhfkit.recipes import dpo, sft

LORA = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8"]


def _rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _sft_cfg(model, train, eval_, *extra):
    return load_config(sft.SFTConfig, None, [
        f"model.name_or_path={model}", f"data.train={train}", f"data.eval={eval_}", "train.batch_size=8",
        "train.micro_batch_size=4", "train.lr=1e-2", "train.max_steps=6", "log.save_every=3", "log.eval_every=3",
        "log.progress=false", *LORA, *extra])


def test_only_adapters_train_and_start_equals_base(tiny_model):
    """B = 0 at init, so W x + (alpha / r) B A x = W x: the wrapped model equals the base."""
    cfg = ModelConfig(name_or_path=str(tiny_model), lora=LoRAConfig(enabled=True, r=4))
    model = loading.load_policy(cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    torch.testing.assert_close(model(input_ids=ids).logits, base(input_ids=ids).logits)
    # An explicit path (a reference, a checkpoint to score) stays plain.
    assert not loading.is_peft(loading.load_policy(cfg, path=str(tiny_model)))


def test_sft_lora_lowers_loss_final_is_merged_and_base_is_untouched(tmp_path, demos, tiny_model):
    out = sft.run(_sft_cfg(tiny_model, *demos, "train.max_steps=12", "train.lr=5e-2"), tmp_path / "run")
    rows = _rows(tmp_path / "run")
    # Frozen random embeddings and head limit a tiny model's LoRA; it still must learn clearly.
    assert sum(r["loss/sft"] for r in rows[-4:]) / 4 < rows[0]["loss/sft"] - 0.1
    assert (out / "adapter" / "adapter_model.safetensors").exists() and (out / "model.safetensors").exists()
    merged = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no peft
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    m, b = merged.state_dict(), base.state_dict()
    assert set(m) == set(b)
    # Adapted linears changed; embeddings and layer norms (not adapted) did not.
    assert not torch.equal(m["transformer.h.0.attn.c_attn.weight"], b["transformer.h.0.attn.c_attn.weight"])
    torch.testing.assert_close(m["transformer.wte.weight"], b["transformer.wte.weight"], rtol=0, atol=0)
    torch.testing.assert_close(m["transformer.h.0.ln_1.weight"], b["transformer.h.0.ln_1.weight"], rtol=0, atol=0)
    # Merged weights reproduce the adapter model's outputs.
    cfg = ModelConfig(name_or_path=str(tiny_model), lora=LoRAConfig(enabled=True, r=4, alpha=8))
    adapted = loading.load_policy(cfg)
    loading.load_weights(adapted, out)
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_sft_lora_resume_matches_uninterrupted_run(tmp_path, demos, tiny_model):
    full = sft.run(_sft_cfg(tiny_model, *demos), tmp_path / "full")
    cut_cfg = _sft_cfg(tiny_model, *demos)
    _run_until(cut_cfg, tmp_path / "cut", stop_after=3)
    assert (tmp_path / "cut" / "checkpoints" / "step-3" / "policy" / "adapter").is_dir()
    resumed = sft.run(cut_cfg, tmp_path / "cut", resume=True)
    a = AutoModelForCausalLM.from_pretrained(full).state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_dpo_lora_reference_is_base_without_a_second_copy(tmp_path, tiny_model, monkeypatch):
    """Policy = base with adapters off at step 0, so with beta = 1000 the first loss is exactly
    -log sigma(0) = log 2; and the model is loaded once (no reference copy of the weights)."""
    from conftest import write_jsonl

    train = write_jsonl(tmp_path / "train.jsonl", random_comparisons(32, seed=0))
    calls = []
    real = dpo.load_policy
    monkeypatch.setattr(dpo, "load_policy", lambda *a, **k: calls.append(k) or real(*a, **k))
    cfg = load_config(dpo.DPOConfig, None, [
        f"model.name_or_path={tiny_model}", f"data.train={train}", "data.eval=null", "sampling.prompts=null",
        "sampling.text=null", "train.batch_size=8", "train.micro_batch_size=4", "train.lr=1e-2", "train.max_steps=3",
        "train.warmup_ratio=0", "train.schedule=constant", "log.save_every=0", "log.eval_every=0",
        "log.progress=false", "beta=1000", *LORA])
    out = dpo.run(cfg, tmp_path / "run")
    rows = _rows(tmp_path / "run")
    assert len(calls) == 1
    assert rows[0]["loss/dpo"] == pytest.approx(math.log(2), abs=1e-3)
    assert rows[-1]["loss/dpo"] != pytest.approx(math.log(2), abs=1e-3)  # the adapters did move the policy
    assert (out / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize(("arch", "targets"), [("gpt2", "all-linear"), ("llama", "all-linear"),
                                               ("gpt2", ["c_attn", "c_fc", "lm_head"])])
def test_merged_save_loads_plain_and_leaves_live_model_unchanged(tmp_path, arch, targets):
    """final/ = W + (alpha / r) B A, written by merging in place and unmerging afterwards. With the
    output head adapted, GPT-2's tied head/embedding is untied first: merging the head's update
    into a tied matrix would change the input embedding too (the saved model would differ)."""
    folder = build_tiny_model(tmp_path / "m", arch)
    lora = LoRAConfig(enabled=True, r=4, target_modules=targets)
    model = loading.load_policy(ModelConfig(name_or_path=str(folder), lora=lora))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # B = 0 at init; give the adapters something to merge
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        loading.save_hf(model, None, tmp_path / "out")
        after = model(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out")(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(folder)(input_ids=ids).logits
    assert (before - base).abs().max() > 1e-2  # the adapters matter...
    torch.testing.assert_close(plain, before, rtol=1e-4, atol=1e-4)  # ...and the merged folder has them
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").exists()
