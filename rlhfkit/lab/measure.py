"""Measurements that certify a lab build: perplexity, sample well-formedness, gold spread.

Why measured at build time: the lab is the test bed for every alignment method, so its
numbers (how grammatical the base model is, where gold sits before and after SFT) are
the baselines later reports compare against; they live in manifest.json.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from rlhfkit.lab import grammar
from rlhfkit.lab.gold import gold_score
from rlhfkit.lab.pretrain import IGNORE_INDEX, collate, encode_documents


@torch.no_grad()
def perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    texts: list[str],
    batch_size: int = 64,
) -> float:
    """exp(mean NLL per predicted token) over `texts`, each scored as `text + EOS`.

    Token-weighted across batches (not a mean of batch means), so it does not depend on
    the batch size.
    """
    docs = encode_documents(texts, tokenizer)
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(docs), batch_size):
        batch = collate(docs[start : start + batch_size], tokenizer.pad_token_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]  # (B, T-1): token t is predicted at t-1
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="sum"
        )
        total_nll += nll.item()
        total_tokens += int((targets != IGNORE_INDEX).sum())
    return math.exp(total_nll / total_tokens)


@torch.no_grad()
def sample_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    prompts: list[str],
    max_new_tokens: int = 64,
    seed: int = 0,
) -> list[str]:
    """One pure temperature-1 sample per prompt (no top-k / top-p), stopped at EOS.

    Prompts are grouped by token length so no batch needs padding: the measurement then
    cannot be skewed by padding-side or position-id handling.
    """
    torch.manual_seed(seed)
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    groups: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(encoded):
        groups[len(ids)].append(i)
    responses = [""] * len(prompts)
    for length in sorted(groups):
        rows = groups[length]
        input_ids = torch.tensor([encoded[i] for i in rows])  # (B, P)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row, ids in zip(rows, out[:, length:].tolist(), strict=True):
            if tokenizer.eos_token_id in ids:
                ids = ids[: ids.index(tokenizer.eos_token_id)]
            responses[row] = tokenizer.decode(ids, skip_special_tokens=True)
    return responses


def distribution(values: list[float]) -> dict[str, float]:
    """mean, std, min, quartiles and max, rounded for a readable manifest."""
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    stats = {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values),
        "min": min(values),
        "q25": q1,
        "median": median,
        "q75": q3,
        "max": max(values),
    }
    return {k: round(v, 4) for k, v in stats.items()}


def sample_metrics(prompts: list[str], responses: list[str]) -> dict:
    """Share of fully well-formed texts and the gold distribution of prompt + response."""
    texts = [p + r for p, r in zip(prompts, responses, strict=True)]
    well_formed = [grammar.well_formed_fraction(t) == 1.0 for t in texts]
    return {
        "n": len(texts),
        "well_formed_share": round(sum(well_formed) / len(texts), 4),
        "gold": distribution(gold_score(texts)),
    }
