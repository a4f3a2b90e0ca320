"""The one place that generates: batched sampling with KV cache, left padding, EOS handling.

Every response is cut at its first EOS (so there is never a second EOS and nothing after it is
scored), and `finished` records whether an EOS was emitted at all, so callers can penalise
responses that never end instead of silently scoring a truncated text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhfkit.data.tokenize import pad_batch


@dataclass
class Sample:
    prompt_ids: list[int]
    response_ids: list[int]  # up to and including the first EOS, if any
    finished: bool  # True when the response ended with EOS
    text: str  # decoded response, special tokens removed


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop: str | None = None  # optional stop string: the response is cut just after it


@torch.no_grad()
def generate(
    model, tokenizer, prompts: list[list[int]], params: SamplingParams, batch_size: int = 64, generator_seed: int | None = None
) -> list[Sample]:
    """Sample one response per prompt (repeat prompts for K samples)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    out: list[Sample] = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        input_ids = pad_batch(chunk, pad, "left").to(device)
        attention = pad_batch([[1] * len(p) for p in chunk], 0, "left").to(device)
        kwargs = dict(do_sample=params.temperature > 0, max_new_tokens=params.max_new_tokens, eos_token_id=eos,
                      pad_token_id=pad, use_cache=True)
        if params.temperature > 0:
            kwargs.update(temperature=params.temperature, top_k=params.top_k or None, top_p=params.top_p)
        seqs = model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        for prompt, row in zip(chunk, seqs[:, input_ids.shape[1] :].tolist(), strict=True):
            out.append(_cut(prompt, row, eos, tokenizer, params.stop))
    model.train(was_training)
    return out


def _cut(prompt: list[int], row: list[int], eos: int, tokenizer, stop: str | None) -> Sample:
    finished = eos in row
    ids = row[: row.index(eos) + 1] if finished else row
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if stop and stop in text:
        # Re-encode the text up to the stop string; it ends the response like an EOS would.
        text = text[: text.index(stop) + len(stop)]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
        finished = True
    return Sample(prompt, ids, finished, text)
