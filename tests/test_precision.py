"""Precision and memory options on tiny models, for the sft, dpo, reward and ppo recipes.

- `model.gradient_checkpointing`: recomputes activations in backward; it changes memory, never the
  maths: the recomputation runs the same kernels on the same inputs in the same order, so gradients,
  losses and final weights are bit-identical to the run without it (asserted exactly: a tolerance
  would not do, since any float difference in a zero-gradient weight, e.g. an attention key bias,
  is turned by Adam into a step of up to lr).
- `train.mixed_precision=bf16`: accelerate's autocast (CPU bf16 here); losses stay finite and
  close to fp32 (bf16 keeps 8 mantissa bits: ~0.4% per rounding, hence loose tolerances).
- `model.dtype=bfloat16`: bf16 weights load and train without NaN.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers.modeling_utils
from conftest import build_tiny_model, random_demos, write_jsonl
from safetensors.torch import load_file
from test_dpo_recipe import random_comparisons

from rlhfkit.config import ModelConfig, load_config
from rlhfkit.models.loading import load_policy
from rlhfkit.recipes import dpo, ppo, reward, sft

COMMON = ["log.progress=false", "log.save_every=0", "train.batch_size=8", "train.micro_batch_size=4",
          "train.max_steps=3", "train.warmup_ratio=0", "train.schedule=constant"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    return {
        "model": build_tiny_model(root / "model"),
        "demos": write_jsonl(root / "demos.jsonl", random_demos(24, 0)),
        "comparisons": write_jsonl(root / "cmp.jsonl", random_comparisons(24, seed=0)),
        "prompts": write_jsonl(root / "prompts.jsonl", [{"prompt": d["prompt"]} for d in random_demos(16, 2)]),
    }


def great_count(prompts, responses):
    """PPO reward: a quarter point per 'great' in the response."""
    return [r.split().count("great") / 4 for r in responses]


# One entry per recipe: (module, config overrides, logged losses, final weight files).
RECIPES = {
    "sft": (sft, lambda f: [f"data.train={f['demos']}", "data.eval=null", "train.lr=1e-2"], ["loss/sft"],
            ["model.safetensors"]),
    "dpo": (dpo, lambda f: [f"data.train={f['comparisons']}", "data.eval=null", "sampling.prompts=null",
                            "sampling.text=null", "train.lr=1e-2", "beta=0.5"], ["loss/dpo"], ["model.safetensors"]),
    "reward": (reward, lambda f: [f"data.train={f['comparisons']}", "data.eval=null", "normalize.source=none",
                                  "train.lr=3e-3"], ["loss/reward"], ["model.safetensors"]),
    "ppo": (ppo, lambda f: [f"data.prompts={f['prompts']}", f"reward.source={__name__}:great_count", "eval.text=null",
                            "rollout.max_new_tokens=5", "ppo.ppo_epochs=2", "train.lr=3e-3"],
            ["loss/policy", "loss/value"], ["model.safetensors", "critic/model.safetensors"]),
}
CONFIG_CLASS = {"sft": sft.SFTConfig, "dpo": dpo.DPOConfig, "reward": reward.RewardConfig, "ppo": ppo.PPOConfig}


def _run(name: str, files: dict, out, *extra: str) -> tuple[list[dict], dict[str, torch.Tensor]]:
    module, overrides, _, weights = RECIPES[name]
    cfg = load_config(CONFIG_CLASS[name], None, [f"model.name_or_path={files['model']}", *COMMON, *overrides(files), *extra])
    final = module.run(cfg, out)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    state = {f"{w}:{k}": v for w in weights for k, v in load_file(str(final / w)).items()}
    return rows, state


@pytest.fixture
def count_checkpoints(monkeypatch):
    """Counts activation-checkpointed blocks run by transformers (bound when checkpointing is enabled)."""
    calls = []
    original = transformers.modeling_utils.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counting)
    return calls


# ----------------------------------------------------------------------------- gradient checkpointing


def test_checkpointing_recomputes_blocks_and_gives_the_same_gradients(tiny_model):
    """Unit level: with checkpointing each block's insides run twice (forward, then again in
    backward) and every gradient equals the plain model's."""
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 1, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    grads, runs = [], []
    for gc in (False, True):
        model = load_policy(ModelConfig(name_or_path=str(tiny_model), gradient_checkpointing=gc)).train()
        assert model.is_gradient_checkpointing == gc
        seen = []  # hooks on a checkpointed block itself stay outside the checkpoint; its attention's run again
        handle = model.transformer.h[0].attn.register_forward_hook(lambda *_, seen=seen: seen.append(1))
        model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
        handle.remove()
        runs.append(len(seen))
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert runs == [1, 2]
    for n, g in grads[0].items():
        assert torch.equal(grads[1][n], g), n  # the same ops on the same values


@pytest.mark.parametrize("name", ["sft", "dpo", "reward", "ppo"])
def test_gradient_checkpointing_changes_memory_not_maths(name, files, tmp_path, count_checkpoints):
    rows_a, state_a = _run(name, files, tmp_path / "plain")
    assert not count_checkpoints
    rows_b, state_b = _run(name, files, tmp_path / "ckpt", "model.gradient_checkpointing=true")
    assert count_checkpoints  # the recipe did train with checkpointed blocks
    for key in RECIPES[name][2]:
        assert [r[key] for r in rows_b] == [r[key] for r in rows_a], key
    assert state_a.keys() == state_b.keys()
    for k, v in state_a.items():
        assert torch.equal(state_b[k], v), k
    moved = load_file(str(files["model"] / "model.safetensors"))
    assert any(not torch.equal(v, state_a[f"model.safetensors:{k}"]) for k, v in moved.items()
               if f"model.safetensors:{k}" in state_a)  # training did change the weights


# ----------------------------------------------------------------------------- bf16


@pytest.mark.parametrize("name", ["sft", "dpo", "reward", "ppo"])
def test_bf16_autocast_runs_on_cpu_close_to_fp32(name, files, tmp_path):
    """Both runs in one process, as in a pipeline: the second stage's precision must take effect
    although accelerate's state is process-wide (it used to raise 'AcceleratorState has already
    been initialized')."""
    rows_a, _ = _run(name, files, tmp_path / "fp32", "train.max_steps=2")
    rows_b, state_b = _run(name, files, tmp_path / "bf16", "train.max_steps=2", "train.mixed_precision=bf16")
    for key in RECIPES[name][2]:
        a, b = [r[key] for r in rows_a], [r[key] for r in rows_b]
        assert all(math.isfinite(x) for x in b), (key, b)
        assert b == pytest.approx(a, rel=0.05, abs=0.02), key
        assert b != a, key  # bf16 rounding did happen: autocast was on
    assert all(torch.isfinite(v).all() for v in state_b.values())
    assert all(v.dtype == torch.float32 for v in state_b.values())  # autocast: fp32 master weights


@pytest.mark.parametrize("name", ["sft", "dpo", "reward", "ppo"])
def test_bfloat16_weights_load_and_train_without_nan(name, files, tmp_path):
    rows, state = _run(name, files, tmp_path / "bf16w", "model.dtype=bfloat16", "train.max_steps=2")
    for key in RECIPES[name][2]:
        assert all(math.isfinite(r[key]) for r in rows), key
    assert all(torch.isfinite(v).all() for v in state.values())
    assert {v.dtype for v in state.values()} == {torch.bfloat16}


def test_bfloat16_weights_resume_exactly(files, tmp_path, capsys):
    """Checkpoints keep bf16 weights and their bf16 AdamW state: 4 steps straight == 2 + resume."""
    import shutil

    extra = ("model.dtype=bfloat16", "train.max_steps=4", "log.save_every=2")
    _, straight = _run("sft", files, tmp_path / "a", *extra)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "final")
    cfg = load_config(sft.SFTConfig, None, [f"model.name_or_path={files['model']}", *COMMON, *RECIPES["sft"][1](files), *extra])
    final = sft.run(cfg, tmp_path / "b", resume=True)
    assert "resumed from" in capsys.readouterr().out  # it did start at step 2, not from scratch
    resumed = load_file(str(final / "model.safetensors"))
    assert [p.name for p in (tmp_path / "a" / "checkpoints").iterdir()] == ["step-2"]
    for k, v in resumed.items():
        assert v.dtype == torch.bfloat16
        assert torch.equal(v, straight[f"model.safetensors:{k}"]), k
