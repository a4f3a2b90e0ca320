"""Lab documents: one function per document type, each a pure function of a seeded stream.

Why one function per type: the lab grows new kinds of documents (Constitutional AI will
add critique and revision documents) without touching the existing ones; `DOCUMENT_TYPES`
is the registry a builder iterates over.

Every stream is seeded from (lab seed, stream name) so adding a stream never changes the
documents of another, and the same seed always rebuilds the same lab.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable

from rlhfkit.lab import grammar

DEMO_MIN_POSITIVITY = 0.85  # the "skilled annotator" writes reviews that are mostly positive
EVAL_PROMPT_SHARE = 8  # one prompt in 8 (by hash) is held out for evaluation


def stream(seed: int, name: str) -> random.Random:
    """An independent, reproducible random stream for one purpose of one lab seed."""
    return random.Random(f"rlhfkit-lab:{seed}:{name}")


def review_document(rng: random.Random) -> dict[str, str]:
    """Pretraining text: a review of mixed sentiment (positivity drawn per review)."""
    return {"text": grammar.sample_review(rng)}


def demonstration_document(rng: random.Random) -> dict[str, str]:
    """SFT demonstration: a positive-leaning, well-formed review split at its prompt."""
    positivity = DEMO_MIN_POSITIVITY + (1 - DEMO_MIN_POSITIVITY) * rng.random()
    prompt, response = grammar.split_prompt(grammar.sample_review(rng, positivity), rng)
    return {"prompt": prompt, "response": response}


def prompt_document(rng: random.Random) -> dict[str, str]:
    """A review opening, as a policy sees it during RL."""
    prompt, _ = grammar.split_prompt(grammar.sample_review(rng), rng)
    return {"prompt": prompt}


DOCUMENT_TYPES: dict[str, Callable[[random.Random], dict[str, str]]] = {
    "review": review_document,
    "demonstration": demonstration_document,
    "prompt": prompt_document,
}


def documents(
    kind: str,
    n: int,
    seed: int,
    name: str | None = None,
    keep: Callable[[dict[str, str]], bool] | None = None,
) -> list[dict[str, str]]:
    """`n` documents of `kind` from the stream `name` (default: the kind) of lab `seed`,
    drawing until `n` pass `keep` when it is given."""
    rng = stream(seed, name or kind)
    make = DOCUMENT_TYPES[kind]
    out: list[dict[str, str]] = []
    while len(out) < n:
        doc = make(rng)
        if keep is None or keep(doc):
            out.append(doc)
    return out


def is_eval_prompt(prompt: str) -> bool:
    """Held-out prompts are chosen by a hash of their text, so the split is stable across
    seeds and sizes and a prompt is never on both sides."""
    return zlib.crc32(prompt.encode()) % EVAL_PROMPT_SHARE == 0


def prompt_splits(n_draws: int, seed: int) -> tuple[list[str], list[str]]:
    """Distinct (train, eval) prompts from `n_draws` review openings, first-seen order."""
    unique = dict.fromkeys(d["prompt"] for d in documents("prompt", n_draws, seed))
    train = [p for p in unique if not is_eval_prompt(p)]
    held_out = [p for p in unique if is_eval_prompt(p)]
    return train, held_out
