"""Reward models: a causal LM backbone with a scalar head, saved as plain HF sequence classifiers.

On disk an RM is an `AutoModelForSequenceClassification` folder (num_labels=1, pad_token_id
set, safetensors) + tokenizer + `reward_normalization.json`:

    {"shift": μ, "scale": σ, "max_length": 256, "stats": {...}}

so it loads in plain transformers (and TRL / OpenRLHF), and rlhfkit reports the normalised
reward (r_raw − shift) / scale, where μ, σ are the raw reward's mean and std on the SFT policy's
responses to held-out prompts (so "0" means "as good as a typical SFT answer").

Reading the score: the reward is the head's output at the last real token, found from the
attention mask (last position where mask == 1), never from `input_ids != pad_token_id`: when pad
== EOS, HF's own pooling skips the response's final EOS and reads the token before it. With
pad != EOS the two agree (tested). Prompt and response are tokenised as in training
(`data.encode_prompt_responses`: the response ends with exactly one EOS), so the score is read
at that EOS.

An ensemble folder (see `models.ensemble`) loads through the same `load_reward_model`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from rlhfkit.config import ModelConfig
from rlhfkit.data import encode_prompt_responses, pad_batch
from rlhfkit.data.tokenize import attention_mask as mask_from_lengths
from rlhfkit.models.loading import (
    _DTYPES,
    ModelLoadError,
    apply_lora,
    disable_dropout,
    enable_checkpointing,
    from_pretrained,
)

NORMALIZATION_FILE = "reward_normalization.json"
HEAD_NAMES = ("score", "classifier")  # the scalar head's attribute on HF *ForSequenceClassification models


# ----------------------------------------------------------------------------- building


def build_reward_model(cfg: ModelConfig, pad_token_id: int, seed: int = 0, path: str | None = None) -> PreTrainedModel:
    """A backbone (causal LM weights; its LM head is dropped) + a fresh scalar head, dropout off
    (rewards are compared across passes).

    The head is drawn from N(0, 1/(d_model + 1)) (Stiennon et al. 2020, appendix C.2: the
    initial rewards have unit-ish scale, and no large random offset between responses).
    `seed` fixes the head, so ensemble members differ in their head and data order.

    With `cfg.lora.enabled` (and no explicit `path`) the model is a peft SEQ_CLS `PeftModel`:
    LoRA adapters on the backbone and a fully trained copy of the head (peft modules_to_save)
    are its only trainable parameters; `save_hf` merges both into a plain classifier folder.
    """
    name = path or cfg.name_or_path
    model, new_head = load_scalar_model(name, cfg, revision=None if path else cfg.revision)
    if new_head:
        announce(f"[reward] new scalar head on {name} (initialised)")
    model.config.pad_token_id = pad_token_id  # HF's pooling needs it; ours uses the mask
    head = reward_head(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        d = head.weight.shape[-1]
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) / math.sqrt(d + 1))
        if head.bias is not None:
            head.bias.zero_()
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    if cfg.lora.enabled and path is None:
        model = apply_lora(model, cfg, task_type="SEQ_CLS")  # after the head init: peft copies the head
    disable_dropout(model)
    return model


def load_scalar_model(name_or_path: str, cfg: ModelConfig, revision: str | None) -> tuple[PreTrainedModel, bool]:
    """A one-label `AutoModelForSequenceClassification` (reward model or critic) and whether its
    head is new, i.e. the folder is a causal LM whose head transformers initialised.

    transformers logs a LOAD REPORT listing that head as MISSING on every such load; it is
    expected here, so the report is dropped when the head is all it lists (the caller prints one
    line instead). Any other missing, unexpected or mismatched key keeps the full report."""
    with held_load_reports() as held:
        model, info = from_pretrained(AutoModelForSequenceClassification, name_or_path, num_labels=1,
                                      revision=revision, trust_remote_code=cfg.trust_remote_code,
                                      use_safetensors=not cfg.allow_pickle_weights, dtype=_DTYPES[cfg.dtype],
                                      output_loading_info=True)
    missing = set(info.get("missing_keys") or ())
    head = {k for k in missing if k.split(".")[0] in HEAD_NAMES}
    others = missing - head or any(v for k, v in info.items() if k != "missing_keys")
    if others:
        release(held)
    return model, bool(head)


@contextmanager
def held_load_reports():
    """Hold back transformers' LOAD REPORT log records made inside the block (yields the list);
    pass them to `release` to log them after all. Released on exceptions, so a failed load
    still shows its report."""
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            held.append(record)
            return False
        return True

    logger = logging.getLogger("transformers.modeling_utils")
    logger.addFilter(hold)
    try:
        yield held
    except BaseException:
        logger.removeFilter(hold)
        release(held)
        raise
    logger.removeFilter(hold)


def release(held: list[logging.LogRecord]) -> None:
    logger = logging.getLogger("transformers.modeling_utils")
    for record in held:
        logger.handle(record)


def announce(line: str) -> None:
    """Print a loading note once per job (the main process of a distributed run: RANK 0)."""
    if os.environ.get("RANK", "0") == "0":
        print(line, flush=True)


def context_length(config: Any, default: int = 2048) -> int:
    """The longest sequence a model config accepts (position embeddings)."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def reward_head(model: torch.nn.Module) -> torch.nn.Module:
    """The scalar head of an HF sequence classifier (`score` on decoder LMs): an nn.Linear, or
    under peft LoRA its ModulesToSaveWrapper (calls and `.weight` go to the trained copy)."""
    for name in HEAD_NAMES:
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Linear) or isinstance(getattr(head, "original_module", None), torch.nn.Linear):
            return head
    raise ValueError(f"{type(model).__name__} has no linear `score`/`classifier` head; cannot use it as a reward model")


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position with mask == 1 in each row, for left or right padding.  (B,)"""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * (attention_mask > 0)).argmax(-1)


def forward_rewards(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Raw rewards (B,) read at each row's last real token.

    The wrapped model's own forward runs (so DDP hooks fire), asked for its hidden states; the
    head is applied to the one gathered position per row. The HF-pooled logits it also returns
    are ignored (they use pad-id pooling, see the module docstring).
    """
    # Positions count real tokens only, so left-padded rollouts score like right-padded rows.
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                output_hidden_states=True, use_cache=False)
    hidden = out.hidden_states[-1]  # (B, T, H), after the final norm
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    pooled = hidden[rows, last_token_index(attention_mask)]  # (B, H)
    head = reward_head(getattr(model, "module", model))
    return head(pooled.to(head.weight.dtype)).squeeze(-1).float()


# ----------------------------------------------------------------------------- tokenising


def encode_scored(tokenizer: Any, prompt: str | Any, response: str, max_length: int, min_prompt_tokens: int = 8) -> list[int]:
    """Token ids of prompt + response as the policy produces them (`data.encode_prompt_responses`):
    a plain prompt's response is its tokens and exactly one EOS; after a record whose messages go
    through the chat template, the template's assistant turn. An empty response is just the EOS,
    so it can still be scored.

    Over `max_length`, the prompt loses tokens from the left first (BOS kept), keeping at least
    `min_prompt_tokens`; then the response is cut on the right (and loses its EOS).
    """
    prompt_ids, (response_ids,), _ = encode_prompt_responses(tokenizer, prompt, (response,), max_length,
                                                             min_prompt_tokens=min_prompt_tokens)
    return prompt_ids + response_ids


def collate_rows(rows: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) ids and the length-based attention mask."""
    return pad_batch(rows, pad_token_id, "right"), mask_from_lengths(rows, "right")


# ----------------------------------------------------------------------------- scoring API


@dataclass
class RewardScores:
    rewards: torch.Tensor  # (N,) normalised, aggregated over members
    members: torch.Tensor  # (M, N) normalised per member (M = 1 for a single RM)
    std: torch.Tensor  # (N,) std across members (0 for a single RM)

    def tolist(self) -> list[float]:
        return self.rewards.tolist()


class RewardModel:
    """Score (prompt, response) pairs with one RM or an ensemble of them.

    members: HF sequence classifiers sharing one tokenizer; normalizations: (shift, scale) per
    member. `aggregation` is one of `models.ensemble.AGGREGATIONS` (mean, min, uwo).
    """

    def __init__(self, members: list[PreTrainedModel], tokenizer: Any, normalizations: list[tuple[float, float]],
                 max_length: int = 256, aggregation: str = "mean", uwo_lambda: float = 1.0, device=None):
        from rlhfkit.models.ensemble import AGGREGATIONS

        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {', '.join(AGGREGATIONS)}")
        if len(members) != len(normalizations):
            raise ValueError(f"{len(members)} members but {len(normalizations)} normalizations")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.members = [m.to(self.device).eval() for m in members]
        self.tokenizer = tokenizer
        self.shift = torch.tensor([s for s, _ in normalizations], dtype=torch.float32, device=self.device)[:, None]  # (M, 1)
        self.scale = torch.tensor([c for _, c in normalizations], dtype=torch.float32, device=self.device)[:, None]
        self.max_length, self.aggregation, self.uwo_lambda = max_length, aggregation, uwo_lambda

    @property
    def num_members(self) -> int:
        return len(self.members)

    def to(self, device) -> RewardModel:
        self.device = torch.device(device)
        self.members = [m.to(self.device) for m in self.members]
        self.shift, self.scale = self.shift.to(self.device), self.scale.to(self.device)
        return self

    @torch.no_grad()
    def raw_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unnormalised rewards of every member, (M, B)."""
        ids, mask = input_ids.to(self.device), attention_mask.to(self.device)
        return torch.stack([forward_rewards(m, ids, mask) for m in self.members])

    def _scores(self, raw: torch.Tensor) -> RewardScores:
        from rlhfkit.models.ensemble import aggregate_members

        members = (raw - self.shift) / self.scale  # (M, N)
        std = members.std(0, correction=0)  # population std; exactly 0 for one member
        rewards = aggregate_members(members, self.aggregation, self.uwo_lambda)
        return RewardScores(rewards=rewards, members=members, std=std)

    def score_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalised, aggregated rewards (B,) of already tokenised prompt+response rows (left or
        right padded; the score is read at the last position where attention_mask == 1)."""
        return self._scores(self.raw_ids(input_ids, attention_mask)).rewards

    def encode(self, prompts: Sequence[str | Any], responses: Sequence[str]) -> list[list[int]]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return [encode_scored(self.tokenizer, p, r, self.max_length) for p, r in zip(prompts, responses, strict=True)]

    def score(self, prompts: Sequence[str | Any], responses: Sequence[str], batch_size: int = 64) -> RewardScores:
        """Score N (prompt, response) pairs; returns `RewardScores` with rewards (N,), members (M, N)
        and std (N,). Rows are batched by length so padding stays small; order is preserved."""
        rows = self.encode(prompts, responses)
        raw = torch.zeros(self.num_members, len(rows), device=self.device)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        pad = self.tokenizer.pad_token_id
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            ids, mask = collate_rows([rows[j] for j in idx], pad)
            raw[:, idx] = self.raw_ids(ids, mask)
        return self._scores(raw)


# ----------------------------------------------------------------------------- save / load


def write_normalization(folder: Path, shift: float, scale: float, max_length: int, stats: dict | None = None) -> None:
    data = {"shift": float(shift), "scale": float(scale), "max_length": int(max_length), "stats": stats or {}}
    (Path(folder) / NORMALIZATION_FILE).write_text(json.dumps(data, indent=2))


def read_normalization(folder: Path) -> dict:
    """The stored offsets; a plain HF classifier without the file is used raw (shift 0, scale 1)."""
    path = Path(folder) / NORMALIZATION_FILE
    data = json.loads(path.read_text()) if path.exists() else {}
    return {"shift": float(data.get("shift", 0.0)), "scale": float(data.get("scale", 1.0)),
            "max_length": int(data.get("max_length", 0)) or None, "stats": data.get("stats", {})}


def load_classifier(folder: str | Path, trust_remote_code: bool = False, allow_pickle_weights: bool = False) -> PreTrainedModel:
    """A saved reward model for scoring: eval mode, dropout off."""
    model = from_pretrained(AutoModelForSequenceClassification, str(folder), trust_remote_code=trust_remote_code,
                            use_safetensors=not allow_pickle_weights)
    if model.config.num_labels != 1:
        raise ValueError(f"{folder}: a reward model has num_labels=1, this classifier has {model.config.num_labels}")
    disable_dropout(model)
    return model.eval()


def load_reward_model(path: str | Path, device=None, aggregation: str = "mean", uwo_lambda: float = 1.0,
                      normalize: bool = True, trust_remote_code: bool = False,
                      allow_pickle_weights: bool = False) -> RewardModel:
    """Load a single RM folder or an ensemble folder (with `ensemble.json`) for scoring.

    normalize=False reports raw rewards (shift 0, scale 1).
    """
    from rlhfkit.models.ensemble import MANIFEST, read_manifest

    path = Path(path)
    if (path / MANIFEST).exists():
        folders = [path / m for m in read_manifest(path)["members"]]
        tok_dir = path if (path / "tokenizer_config.json").exists() else folders[0]
    else:
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path}: not a reward model folder (no config.json or {MANIFEST})")
        folders, tok_dir = [path], path
    tokenizer = from_pretrained(AutoTokenizer, str(tok_dir), trust_remote_code=trust_remote_code)
    members, norms, max_len = [], [], None
    for folder in folders:
        members.append(load_classifier(folder, trust_remote_code, allow_pickle_weights))
        n = read_normalization(folder)
        norms.append((n["shift"], n["scale"]) if normalize else (0.0, 1.0))
        max_len = max_len or n["max_length"]
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    max_len = min(max_len or 10**9, context_length(members[0].config))
    return RewardModel(members, tokenizer, norms, max_length=max_len, aggregation=aggregation,
                       uwo_lambda=uwo_lambda, device=device)
