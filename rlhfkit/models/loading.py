"""Load policies, references and tokenizers from HF names or folders; save HF folders.

`name_or_path="lab"` resolves to the built-in lab's base model (built on first use). Everything
saved here loads in plain transformers: `save_pretrained` with safetensors, tokenizer alongside.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from rlhfkit.config import ModelConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(name_or_path: str) -> str:
    if name_or_path == "lab":
        from rlhfkit.lab import base_model_dir

        return str(base_model_dir())
    return name_or_path


def load_tokenizer(cfg: ModelConfig, path: str | None = None) -> PreTrainedTokenizerBase:
    """Tokenizer with a pad token guaranteed.

    Without a pad token we reuse EOS. That is safe here because rlhfkit never derives labels or
    EOS positions from the attention mask: labels are built explicitly (data.tokenize), and
    generations are cut at the first EOS (rollout), which is the usual source of "the model never
    learns to stop" when pad == eos.
    """
    tok = AutoTokenizer.from_pretrained(
        path or resolve_model_path(cfg.name_or_path), revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
    )
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer of {cfg.name_or_path!r} has neither a pad nor an EOS token; set one first")
        tok.pad_token = tok.eos_token
    if cfg.chat_template:
        template = cfg.chat_template
        if os.path.isfile(template):
            template = Path(template).read_text()
        tok.chat_template = template
    tok.padding_side = "right"  # training default; rollout pads left itself
    return tok


def load_policy(cfg: ModelConfig, path: str | None = None) -> PreTrainedModel:
    """A causal LM from `path` (a checkpoint) or the configured name/folder."""
    model = AutoModelForCausalLM.from_pretrained(
        path or resolve_model_path(cfg.name_or_path),
        revision=None if path else cfg.revision,
        trust_remote_code=cfg.trust_remote_code,
        dtype=_DTYPES[cfg.dtype],
    )
    if cfg.disable_dropout:
        disable_dropout(model)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model


def disable_dropout(model: torch.nn.Module) -> None:
    """RL and preference losses compare log-probs across passes; dropout would make them noisy."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def save_hf(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, folder: Path, state_dict=None) -> None:
    """`save_pretrained` (safetensors) + tokenizer: a folder plain transformers can load."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load a `save_pretrained` folder's weights into an existing model, exactly (for resume).

    Tied weights (e.g. GPT-2's lm_head = wte) are not stored twice; they are the only keys
    allowed to be missing.
    """
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        state = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(str(folder / shard)))
    else:
        state = load_file(str(folder / "model.safetensors"))
    result = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"{folder}: weights do not match the model (missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})")


def publish_folder(tmp: Path, final: Path) -> None:
    """Move a fully written folder into place (replacing an older one) in one rename."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
