"""Packed rows: several sequences share one row of a forward pass, kept exactly apart.

    batch = pack_rows(ids, labels, pad_token_id, capacity)      # first-fit decreasing into rows
    out, x = packed_forward(model, batch)                        # block-diagonal mask or varlen layout
    logps, lengths = sequence_logps(model, batch)                # per sequence (DPO, KTO)
    rewards = sequence_rewards(model, batch)                     # scalar head at each last token (reward)
    capacity = packing_capacity(models, max_length, items, pack, ...)  # or None: one padded row each

Used by SFT, reward, DPO and KTO. A recipe packs each micro-batch on its own, so packing changes
where a sequence sits in the forward pass, never which sequences make up a step: the loss is that
of one padded row per sequence up to float32 reduction order (`check_packing` states the bound).

Packed rows are exact only if the model keeps a row's sequences apart and restarts their
positions. transformers uses a 4D attention mask as given (masking_utils returns it unchanged),
so an explicit block-diagonal causal mask needs no model-specific packing detection (OPT, for
one, never passes position_ids to its mask builder, so without it every sequence attended to
those before it in its row). eager adds the mask to the scores, sdpa takes it as booleans.
Flash-attention takes no dense mask: its padding-free path reads the boundaries from
position_ids, and only for a batch of one row (modeling_flash_attention_utils._is_packed_sequence).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import torch

from rlhfkit.losses.logprobs import token_logps
from rlhfkit.models.reward import reward_head

IGNORE_INDEX = -100
MASKED_ATTENTION = ("eager", "sdpa")
ATTENTION_LAYERS = {"full_attention", "sliding_attention"}

# float32 unit roundoff, and how many of them a packed result may be off (see check_packing).
FLOAT32_U = 2.0**-24
ROUNDOFF_ULPS = 2.0**10
CHECK_SEQUENCES = 16  # items compared packed vs padded before training

Batch = dict  # pack_rows' output: tensors and the sequence count "n"
Pack = Callable[..., Batch]  # pack(items, capacity=...) -> Batch
Measure = Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, torch.Tensor]]


# ----------------------------------------------------------------------------- layout


def pack_rows(ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]] | None, pad_token_id: int,
              capacity: int | None) -> Batch:
    """The n sequences `ids` (with `labels` alongside: -100 where nothing is learnt; None = none)
    as one batch for a single forward pass.

    capacity set (packing): sequences are placed first-fit by decreasing length into rows of at
    most `capacity` tokens (a longer one gets a row of its own), `position_ids` restarting at 0 for
    each (a row's fill is a sequence of its own); `packed_inputs` keeps a row's sequences apart, so
    no compute goes to padding. capacity None: one sequence per row, right-padded, with a 2D
    attention mask. A sequence's first label is always -100: nothing of its own sequence predicts
    it (in a packed row the position before it is another sequence's last). Returns input_ids,
    labels, seq_index (which of the n sequences each position holds, -1 for fill), all (R, T);
    position_ids (R, T) when packed, else None; attention_mask (R, T) when padded, else None; n.
    """
    if labels is not None and any(len(a) != len(b) for a, b in zip(ids, labels, strict=True)):
        raise ValueError("every sequence needs one label per token")
    if capacity is None:
        rows = [[i] for i in range(len(ids))]
    else:
        rows, room = [], []
        for i in sorted(range(len(ids)), key=lambda i: -len(ids[i])):
            r = next((k for k, free in enumerate(room) if free >= len(ids[i])), None)
            if r is None:
                rows.append([])
                room.append(max(capacity, len(ids[i])))
                r = len(rows) - 1
            rows[r].append(i)
            room[r] -= len(ids[i])
    width = max(sum(len(ids[i]) for i in row) for row in rows)
    shape = (len(rows), width)
    fill = pad_token_id if capacity is None else int(pad_token_id == 0)  # any id; not pad, so HF sees no padding
    out = {"input_ids": torch.full(shape, fill), "position_ids": torch.zeros(shape, dtype=torch.long),
           "labels": torch.full(shape, IGNORE_INDEX), "seq_index": torch.full(shape, -1)}
    mask = torch.zeros(shape, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            n = len(ids[i])
            out["input_ids"][r, at : at + n] = torch.as_tensor(ids[i])
            out["position_ids"][r, at : at + n] = torch.arange(n)
            if labels is not None and n > 1:
                out["labels"][r, at + 1 : at + n] = torch.as_tensor(labels[i][1:])
            out["seq_index"][r, at : at + n] = i
            mask[r, at : at + n] = 1
            at += n
        out["position_ids"][r, at:] = torch.arange(width - at)  # fill: a sequence of its own
    if capacity is None:  # plain padding: the mask marks it, positions are the model's default
        out["attention_mask"], out["position_ids"] = mask, None
    else:
        out["attention_mask"] = None
    out["n"] = len(ids)
    return out


def pack_sequences(prompts: list[list[int]], responses: list[list[int]], pad_token_id: int,
                   capacity: int | None) -> Batch:
    """`pack_rows` of the n sequences prompt_i + response_i, labelled on the response tokens."""
    return pack_rows([p + r for p, r in zip(prompts, responses, strict=True)],
                     [[IGNORE_INDEX] * len(p) + r for p, r in zip(prompts, responses, strict=True)], pad_token_id, capacity)


def to_device(batch: Batch, device) -> Batch:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# ----------------------------------------------------------------------------- the model side


def _unwrap(model):
    """The model under DDP/FSDP/DeepSpeed wrappers (`.module`); peft models forward `.config`."""
    while not hasattr(model, "config") and hasattr(model, "module"):
        model = model.module
    return model


def _hf_config(model):
    return getattr(_unwrap(model), "config", None)


def _attention(model) -> str | None:
    return getattr(_hf_config(model), "_attn_implementation", None)


def _varlen(implementation: str | None) -> bool:
    return implementation is not None and "flash" in implementation and "paged" not in implementation


def packing_problem(model, capacity: int) -> str | None:
    """Why `model` cannot run packed rows exactly as one padded row per sequence; None if it can.

    Decided from the architecture, not measured: the forward must take position_ids (BLOOM and
    MPT derive ALiBi offsets from the attention mask, as Falcon does with `alibi`); the attention
    implementation must take a 4D mask (eager, sdpa) or read boundaries from position_ids
    (flash-attention); every layer must be attention (a linear-attention or state-space layer
    carries its state across a row); and a sliding window shorter than a sequence would need a
    mask of its own per layer type.
    """
    config = _hf_config(model)
    if config is None:
        return f"{type(model).__name__} has no transformers config"
    inner = _unwrap(model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # peft
    name = type(inner).__name__
    if "position_ids" not in inspect.signature(inner.forward).parameters:
        return f"{name} takes no position_ids"
    if getattr(config, "alibi", False):
        return f"{name} uses ALiBi offsets derived from the attention mask"
    impl = getattr(config, "_attn_implementation", None)
    if impl not in MASKED_ATTENTION and not _varlen(impl):
        return f"attention implementation {impl!r} has no exact packed layout here (eager, sdpa, flash-attention do)"
    layer_types = getattr(config, "layer_types", None)
    other = sorted(set(layer_types or ()) - ATTENTION_LAYERS)
    if other:
        return f"{name} has {', '.join(other)} layers, which carry state across a packed row"
    window = getattr(config, "sliding_window", None)
    if window and window < capacity and (layer_types is None or "sliding_attention" in layer_types):
        return f"{name} uses sliding-window attention (window {window} < data.max_length {capacity})"
    return None


def block_causal_mask(seq_index: torch.Tensor, implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """(R, 1, T, T) attention mask of packed rows (R, T) of sequence ids: position q sees k <= q
    of its own sequence only. Booleans for sdpa (True = attend); for eager additive, 0 or the
    dtype's min (not -inf: what transformers' own eager masks use)."""
    t = seq_index.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=seq_index.device).tril()
    allowed = ((seq_index[:, :, None] == seq_index[:, None, :]) & causal)[:, None]  # (R, 1, T, T)
    if implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def packed_inputs(model, batch: Batch) -> dict[str, torch.Tensor]:
    """input_ids, position_ids, attention_mask, labels, seq_index for `model`'s forward over the
    rows of `pack_rows`: packed rows get the mask or layout `model`'s attention needs (see the
    module docstring); padded rows go as they are."""
    keys = ("input_ids", "position_ids", "attention_mask", "labels", "seq_index")
    out = {k: batch[k] for k in keys}
    if batch["attention_mask"] is not None:
        return out
    impl = _attention(model)
    if _varlen(impl):  # padding-free: every sequence in one row, fill dropped; (R, T) -> (1, N)
        keep = batch["seq_index"] >= 0
        return {**{k: out[k][keep][None] for k in keys if k != "attention_mask"}, "attention_mask": None}
    if impl not in MASKED_ATTENTION:
        raise ValueError(f"packed rows need eager, sdpa or flash-attention, not {impl!r} (see packing_problem)")
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    out["attention_mask"] = block_causal_mask(batch["seq_index"], impl, dtype)
    return out


def packed_forward(model, batch: Batch, **kwargs):
    """`model`'s own forward over a `pack_rows` batch (so DDP/FSDP hooks fire): (its output, the
    inputs it was given: `packed_inputs`, whose labels and seq_index match the output's layout)."""
    x = packed_inputs(model, batch)
    out = model(input_ids=x["input_ids"], attention_mask=x["attention_mask"], position_ids=x["position_ids"],
                use_cache=False, **kwargs)
    return out, x


def per_sequence(values: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    """(n,) sums of (R, T) `values` by sequence; fill (-1) must carry 0."""
    return values.new_zeros(n).index_add(0, owner.clamp(min=0).flatten(), values.flatten())


def next_token_logits(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward pass: logits (R', T'-1, V) of each position that predicts a token, that token's
    label (R', T'-1; -100 unless it is a labelled token of the same sequence: `pack_rows` makes
    every first label -100) and its sequence (R', T'-1)."""
    out, x = packed_forward(model, batch)
    return out.logits[:, :-1], x["labels"][:, 1:], x["seq_index"][:, 1:]


def sequence_logps(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs (n,) of each sequence's labelled tokens and their counts (n,), one forward
    (`pack_sequences`: the response tokens; DPO's `pack_pairs`: n = 2m, chosen first)."""
    logits, labels, owner = next_token_logits(model, batch)
    tok = token_logps(logits, labels)  # (R, T-1), 0 where label is -100
    return per_sequence(tok, owner, batch["n"]), per_sequence((labels >= 0).to(tok.dtype), owner, batch["n"])


def last_positions(seq_index: torch.Tensor, n: int) -> torch.Tensor:
    """(n,) flat index into (R*T) of each sequence's last position."""
    flat = seq_index.flatten()
    at = torch.arange(flat.numel(), device=flat.device)
    keep = flat >= 0
    return torch.full((n,), -1, dtype=torch.long, device=flat.device).scatter_reduce(0, flat[keep], at[keep], "amax")


def _pooled(model, batch: Batch) -> tuple[torch.Tensor, torch.nn.Module]:
    """(n, H) final hidden state (after the final norm) at each sequence's last token, and the head."""
    out, x = packed_forward(model, batch, output_hidden_states=True)
    hidden = out.hidden_states[-1]  # (R', T', H)
    pooled = hidden.flatten(0, 1)[last_positions(x["seq_index"], batch["n"])]
    head = reward_head(getattr(model, "module", model))
    return pooled.to(head.weight.dtype), head


def sequence_rewards(model, batch: Batch) -> torch.Tensor:
    """Raw rewards (n,) of a `pack_rows` batch from a scalar (sequence classification) model: the
    head applied to each sequence's last hidden state, as `models.reward.forward_rewards` does for
    right-padded rows. The HF-pooled logits the model also returns are ignored."""
    pooled, head = _pooled(model, batch)
    return head(pooled).squeeze(-1).float()


# ----------------------------------------------------------------------------- exact, or not used


def logp_measure(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """`sequence_logps` (n,) and each one's float32 tolerance (n,) (`check_packing`): 2^10 units of
    roundoff of (2 max|z| + log V) per labelled token, summed over the sequence."""
    logits, labels, owner = next_token_logits(model, batch)
    logits = logits.float()
    values = per_sequence(token_logps(logits, labels), owner, batch["n"])
    size = 2 * logits.abs().amax(-1) + math.log(logits.shape[-1])  # (R, T-1): 2 max|z| + log V
    return values, ROUNDOFF_ULPS * FLOAT32_U * per_sequence(torch.where(labels >= 0, size, 0.0), owner, batch["n"])


def reward_measure(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """`sequence_rewards` (n,) and each one's float32 tolerance (n,): r = w.h + b with h the final
    hidden state, so a perturbation of h moves r by at most ||w|| ||dh|| (Cauchy-Schwarz); allowed
    2^10 units of roundoff of ||w|| ||h|| + |b| (`check_packing`)."""
    pooled, head = _pooled(model, batch)
    values = head(pooled).squeeze(-1).float()
    bias = head.bias.abs().float() if getattr(head, "bias", None) is not None else 0.0
    size = head.weight.float().norm() * pooled.float().norm(dim=-1) + bias
    return values, ROUNDOFF_ULPS * FLOAT32_U * size


@torch.no_grad()
def check_packing(model, items: list, pack: Pack, capacity: int, batch_size: int | None = None,
                  measure: Measure = logp_measure) -> str | None:
    """Packed vs one-per-row results of every sequence of `items`, packed `batch_size` items at a
    time as training packs them (`pack(chunk, capacity=...)`): None if all agree, else a one-line
    description of the worst.

    Tolerance from float32 arithmetic (`measure` gives it per sequence): a token's log p = z_y -
    logsumexp(z), and both terms are at most max|z| + log V in size (V: vocabulary). Both layouts
    run the same operations in other reduction orders (wider rows, more masked keys, other GEMM
    blocking), so each term may move by rounding: allowed 2^10 units of roundoff (u = 2^-24;
    sqrt(n) growth of reordered sums of up to n = 2^16 terms is 2^8, times 2^2 for the depth) of
    (2 max|z| + log V) per labelled token, summed over the sequence (a reward: of its terms' size,
    `reward_measure`). The seven tiny test architectures measure <= 3 u of it. Only float32 models
    are checked, with full-precision float32 matmuls (no TF32): bfloat16's roundoff (2^-8) would
    hide a leak; there the architecture rule (`packing_problem`) decides.
    """
    if next(p.dtype for p in model.parameters() if p.is_floating_point()) != torch.float32:
        return None
    device = next(model.parameters()).device
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    diffs, tols = [], []
    try:
        step = batch_size or len(items)
        for i in range(0, len(items), step):
            chunk = items[i : i + step]
            packed, _ = measure(model, to_device(pack(chunk, capacity=capacity), device))
            alone, tol = measure(model, to_device(pack(chunk, capacity=None), device))
            diffs.append((packed.float() - alone).abs())
            tols.append(tol)
    finally:
        torch.set_float32_matmul_precision(precision)
    diff, tol = torch.cat(diffs), torch.cat(tols)
    if not (diff > tol).any():
        return None
    k = int((diff - tol).argmax())
    return (f"{type(model).__name__} leaks between packed sequences: a sequence's result moved by {diff[k]:.3g} "
            f"(float32 tolerance {tol[k]:.2g})")


def packing_capacity(models: list, capacity: int, items: list, pack: Pack, batch_size: int, announce: Callable[[str], None],
                     measure: Measure = logp_measure) -> int | None:
    """Row capacity of packed passes (`capacity`), or None: one padded row per sequence. Packing is
    used only where it is exact for every model: by architecture (`packing_problem`), then
    measured on the first CHECK_SEQUENCES items (`check_packing`); otherwise `announce(why)`."""
    for m in models:
        why = packing_problem(m, capacity) or check_packing(m, items[:CHECK_SEQUENCES], pack, capacity, batch_size, measure)
        if why:
            announce(why)
            return None
    return capacity
