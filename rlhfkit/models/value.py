"""The PPO critic: a causal-LM backbone with a scalar head, giving a value at every token.

The critic is an HF `*ForSequenceClassification` model with one label, so it saves and loads as
a plain HF folder (and a trained reward model folder of that kind *is* a critic initialisation,
as in InstructGPT, which initialises the value function from the RM). Its `score` head is
applied to every position; `token_values` reads the per-token outputs of that head with a
forward hook, so the call goes through the (possibly DDP/FSDP-wrapped) model's own forward and
gradients synchronise as usual.

    critic = load_value_model("policy", cfg.model)       # policy backbone, zero head: V = 0 at start
    critic = load_value_model("runs/rm/final", cfg.model)   # from a reward model folder
    values = token_values(critic, input_ids, attention_mask, position_ids)   # (B, T)

With `model_cfg.lora.enabled` the critic gets its own LoRA adapters (peft task type SEQ_CLS, which
keeps the `score` head fully trainable as a `modules_to_save` copy), so its backbone is frozen like
the policy's; checkpoints hold the adapters and the head, and `save_hf` writes the merged model.
(The critic's frozen backbone is still a second copy of the base weights: sharing the policy's
trunk would change the method, and InstructGPT keeps the two models separate.)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlhfkit.config import ModelConfig
from rlhfkit.models.ensemble import MANIFEST, read_manifest
from rlhfkit.models.loading import (
    apply_lora,
    disable_dropout,
    enable_checkpointing,
    resolve_model_path,
)
from rlhfkit.models.reward import HEAD_NAMES as _HEADS
from rlhfkit.models.reward import announce, load_scalar_model


def value_head(model: torch.nn.Module) -> torch.nn.Module:
    """The scalar head module of a sequence-classification model (unwrapping DDP/compile)."""
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    for name in _HEADS:
        head = getattr(inner, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    raise TypeError(f"{type(inner).__name__} has no scalar head ({' or '.join(_HEADS)})")


def _is_classifier_folder(folder: Path) -> bool:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return False
    archs = json.loads(cfg.read_text()).get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in archs)


def load_value_model(init: str, model_cfg: ModelConfig, policy_path: str | None = None, lora: bool | None = None):
    """A one-label sequence-classification model to serve as the critic.

    init = "policy": the policy's weights (`policy_path` or `model_cfg.name_or_path`) with a new,
    zero-initialised head, so every value starts at 0 and early advantages are plain returns.
    init = a folder: a reward model saved as `*ForSequenceClassification` keeps its head (values
    start at the RM's score); a causal-LM folder gets a zero head like "policy".
    lora (default `model_cfg.lora.enabled`): wrap it in LoRA adapters (see the module docstring).
    Dropout is off. `model_cfg.revision` applies when the critic starts from `model_cfg.name_or_path`.
    """
    name = (policy_path or model_cfg.name_or_path) if init == "policy" else init
    path = resolve_model_path(name)
    if (Path(path) / MANIFEST).exists():  # a reward-model ensemble: start from its first member
        path = str(Path(path) / read_manifest(Path(path))["members"][0])
    keep_head = init != "policy" and _is_classifier_folder(Path(path))
    revision = model_cfg.revision if init == "policy" and policy_path is None else None
    model, new_head = load_scalar_model(path, model_cfg, revision=revision)
    if new_head:
        announce(f"[ppo] new value head on {name} (zero-initialised)")
    if model.config.pad_token_id is None:
        # The pooled output we ignore needs a pad id; the attention mask marks padding anyway.
        model.config.pad_token_id = model.config.eos_token_id if model.config.eos_token_id is not None else 0
    if not keep_head:
        with torch.no_grad():
            head = value_head(model)
            for p in head.parameters():
                p.zero_()
    if model_cfg.gradient_checkpointing:  # like the policy (models.loading.load_policy)
        enable_checkpointing(model)
    if model_cfg.lora.enabled if lora is None else lora:
        model = apply_lora(model, model_cfg, task_type="SEQ_CLS")  # backbone frozen, `score` trained in full
    disable_dropout(model)  # values are compared across passes (old vs new in the clipped value loss)
    return model


def token_values(critic: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) float32: the head's output at every position (V of the state *before* token t+1)."""
    captured: list[torch.Tensor] = []
    handle = value_head(critic).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        critic(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    finally:
        handle.remove()
    return captured[0].squeeze(-1).float()
