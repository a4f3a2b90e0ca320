"""Dropout off in every model an RL or preference loss compares across passes, for seven
architectures whose dropout lives in different places: nn.Dropout modules (GPT-2, GPT-NeoX,
Phi-3), floats cached on modules at init (OPT's F.dropout(p=self.dropout), the attention_dropout
of Llama, Mistral, Qwen2, Phi-3, GPT-NeoX), OPT's layerdrop, and the configs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import build_word_tokenizer, random_demos, write_jsonl

from rlhfkit import cli
from rlhfkit.config import ModelConfig
from rlhfkit.models.loading import disable_dropout, load_policy, load_reference
from rlhfkit.models.reward import build_reward_model
from rlhfkit.models.value import load_value_model

P = 0.1
# Every dropout-like field each architecture's config has, all set to P.
DROPOUTS = {
    "qwen2": ["attention_dropout"],
    "mistral": ["attention_dropout"],
    "phi3": ["attention_dropout", "resid_pdrop", "embd_pdrop"],
    "opt": ["dropout", "attention_dropout", "layerdrop"],
    "llama": ["attention_dropout"],
    "gpt_neox": ["attention_dropout", "hidden_dropout", "classifier_dropout"],
    "gpt2": ["resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout"],
}
ARCHS = list(DROPOUTS)


def build_dropout_model(folder: Path, arch: str) -> Path:
    """A 2-layer, width-32, 128-position causal LM of `arch` with every dropout at P, saved with
    the word tokenizer."""
    from transformers import (
        AutoModelForCausalLM,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        OPTConfig,
        Phi3Config,
        Qwen2Config,
    )

    tok = build_word_tokenizer(folder)
    common = dict(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                  bos_token_id=tok.eos_token_id)
    small = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
                 max_position_embeddings=128, **common)
    cfg = {
        "qwen2": lambda: Qwen2Config(**small),
        "mistral": lambda: MistralConfig(**small),
        "phi3": lambda: Phi3Config(**small, original_max_position_embeddings=128),
        "llama": lambda: LlamaConfig(**small),
        "opt": lambda: OPTConfig(num_hidden_layers=2, hidden_size=32, ffn_dim=64, num_attention_heads=2,
                                 max_position_embeddings=128, word_embed_proj_dim=32, **common),
        "gpt_neox": lambda: GPTNeoXConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                          max_position_embeddings=128, **common),
        "gpt2": lambda: GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=128, **common),
    }[arch]()
    for name in DROPOUTS[arch]:
        assert hasattr(cfg, name), (arch, name)  # a misspelt name would only add an unused attribute
        setattr(cfg, name, P)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    return folder


IDS = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16, 17, 18]])


def _two_train_forwards(model) -> tuple[torch.Tensor, torch.Tensor]:
    model.train()
    with torch.no_grad():
        return model(input_ids=IDS).logits, model(input_ids=IDS).logits


@pytest.mark.parametrize("arch", ARCHS)
def test_dropout_off_makes_train_mode_forwards_identical(tmp_path, arch):
    """With dropout at P = 0.1 everywhere two train-mode passes differ (the control: the test
    model really has dropout on); through every rlhfkit loader with dropout off they are equal
    bit for bit (same weights, same inputs, same kernels: nothing random is left)."""
    folder = build_dropout_model(tmp_path / arch, arch)
    on = ModelConfig(name_or_path=str(folder))
    a, b = _two_train_forwards(load_policy(on))
    assert not torch.equal(a, b)

    off = ModelConfig(name_or_path=str(folder), disable_dropout=True)
    policy = load_policy(off)
    models = {"policy": policy, "reference": load_reference(on, load_policy(on)), "reward": build_reward_model(on, 0),
              "critic": load_value_model("policy", on)}
    for role, model in models.items():
        a, b = _two_train_forwards(model)
        assert torch.equal(a, b), (arch, role)
    for name in DROPOUTS[arch]:  # the config says so too (some models read it at forward time)
        assert getattr(policy.config, name) == 0.0, name


def test_disable_dropout_reaches_sub_configs_and_cached_floats():
    """A composite config (text_config inside) and a module that cached its probability as a float."""
    from transformers import GPT2Config, PretrainedConfig

    class Cached(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = PretrainedConfig(hidden_dropout_prob=P, text_config=GPT2Config(resid_pdrop=P))
            self.dropout = P
            self.attn_dropout_p = P
            self.scale = P  # not a dropout: untouched

    m = Cached()
    disable_dropout(m)
    assert m.dropout == 0.0 and m.attn_dropout_p == 0.0 and m.scale == P
    assert m.config.hidden_dropout_prob == 0.0 and m.config.text_config.resid_pdrop == 0.0


# ----------------------------------------------------------------------------- end to end


def _pairs(n: int) -> list[dict]:
    demos = random_demos(2 * n, seed=3)
    return [{"prompt": a["prompt"], "chosen": a["response"], "rejected": b["response"]}
            for a, b in zip(demos[::2], demos[1::2], strict=True)]


def count_great(prompts, responses):
    return [r.split().count("great") / 4 for r in responses]


def _first_row(out: Path) -> dict:
    return json.loads((out / "metrics.jsonl").read_text().split("\n")[0])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_dpo_first_loss_is_ln2(tmp_path, arch):
    """Step 1 of DPO: the policy is the reference, so every margin is 0 and the loss is
    -log sigmoid(0) = ln 2. The policy pass (train mode, its own batches) and the cached reference
    log-probs (other batch shapes) agree to float32 rounding, ~1e-6 per sequence log-prob of <= 8
    tokens; times beta = 0.1 and the slope 1/2 of -log sigmoid at 0, the loss moves < 1e-6, so 1e-5.
    (Dropout 0.1 moved OPT's loss to ~0.70.) Sequences are not packed: packing is a question of
    its own (Qwen2 and OPT leak across packed sequences here, whatever the dropout)."""
    model = build_dropout_model(tmp_path / arch, arch)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", _pairs(8))
    code = cli.main(["dpo", "--out", str(tmp_path / "dpo"), "--set", f"model.name_or_path={model}",
                     "--set", f"data.train={pairs}", "--set", "data.eval=null", "--set", "sampling.prompts=null",
                     "--set", "sampling.text=null", "--set", "data.packing=false", "--set", "train.batch_size=8",
                     "--set", "train.micro_batch_size=4", "--set", "train.max_steps=1", "--set", "log.save_every=0",
                     "--set", "log.progress=false"])
    assert code == 0
    assert _first_row(tmp_path / "dpo")["loss/dpo"] == pytest.approx(math.log(2), abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_ppo_first_kl_is_0(tmp_path, arch):
    """Step 1 of PPO: the KL between the policy and its identical reference on the rollouts is 0
    up to float32 rounding of the log-probs (~1e-6 per token, <= 4 response tokens, averaged:
    < 1e-5). With one epoch and one minibatch the ratio is exactly 1, so nothing clips."""
    model = build_dropout_model(tmp_path / arch, arch)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": d["prompt"]} for d in random_demos(8)])
    code = cli.main(["ppo", "--out", str(tmp_path / "ppo"), "--set", f"model.name_or_path={model}",
                     "--set", f"data.prompts={prompts}", "--set", f"reward.source={__name__}:count_great",
                     "--set", "eval.text=null", "--set", "rollout.max_new_tokens=4", "--set", "train.batch_size=8",
                     "--set", "train.micro_batch_size=8", "--set", "train.max_steps=1", "--set", "ppo.ppo_epochs=1",
                     "--set", "log.save_every=0", "--set", "log.progress=false"])
    assert code == 0
    row = _first_row(tmp_path / "ppo")
    assert row["kl/mean"] == pytest.approx(0.0, abs=1e-5)
    assert row["policy/clipfrac"] == 0.0
