"""A verifiable task in the lab: review openings that set a sentiment, and a rule that checks it.

    lab:verifiable_train / lab:verifiable_eval     {"prompt": "what a terrible", "sentiment": "negative"}
    reward.source=rlhfkit.lab.verifiable:reward    1 where the rule holds, else 0

Each prompt is the start of a lab review cut just after its first sentiment word (`what a terrible`,
`this film kept`), so the prompt names the sentiment the review must keep; the record carries it
as a column (`sentiment`), which a `module:function` reward receives by name. The rule (`success`)
is what a verifier can check exactly, like a maths answer:

    the whole review (prompt + response) is well-formed under the lab grammar (every sentence
    fits a template, the last one terminated: `grammar.well_formed_fraction` = 1), and
    the response uses at least one sentiment word, every one of them of the target sentiment.

The base model keeps the sentiment about a quarter of the time (it was pretrained on reviews whose
positivity is drawn per review, and often ends mid-sentence), so GRPO has groups with and
without successes from the start.

What the rule does not see: a negative target is met by a text the gold judge dislikes (gold is
positive sentiment in natural text), so on negative prompts success and gold pull apart by design;
and a *looser* rule is easy to game. `mentions` is that rule (count the target-sentiment words, no
grammar check): a policy trained on it repeats sentiment words, which the rule pays for and gold
penalises (repetition, malformed sentences), the proxy/gold divergence the hacking alarms watch.

The files are generated on first use (not at lab build time, so this module is not part of the lab
key) into `<lab>/verifiable-<hash of this file>/`, deterministically from the lab's seed, grammar
and lexicon; held-out prompts are chosen by the lab's own hash rule (`corpus.is_eval_prompt`).
"""

from __future__ import annotations

import functools
import os
import uuid
from pathlib import Path

from rlhfkit.data.jsonl import write_jsonl
from rlhfkit.lab import corpus, grammar, lexicon

NAMES = ("verifiable_train", "verifiable_eval")
SIZES = {"verifiable_train": 1024, "verifiable_eval": 256}
MAX_DRAWS = 200_000  # reviews drawn at most while looking for distinct prompts
MENTIONS_CAP = 8  # `mentions` pays up to this many target-sentiment words


@functools.cache
def sentiment_lexicon() -> dict[str, frozenset[str]]:
    """{"positive": words, "negative": words}: the words of the lexicon's _pos / _neg classes that
    carry sentiment on their own (`grammar.sentiment_words`: never neutral, never template words),
    minus any word of both."""
    words = {s: {w for c, phrases in lexicon.CLASSES.items() if c.endswith(suffix) for p in phrases for w in p.split()}
             for s, suffix in (("positive", "_pos"), ("negative", "_neg"))}
    both = words["positive"] & words["negative"]
    return {s: frozenset((ws - both) & grammar.sentiment_words()) for s, ws in words.items()}


def sentiment_of(word: str) -> str | None:
    return next((s for s, ws in sentiment_lexicon().items() if word in ws), None)


# ----------------------------------------------------------------------------- the rule


def success(prompt: str, response: str, sentiment: str) -> bool:
    """The rule: prompt + response well-formed, and the response's sentiment words (at least one)
    all of `sentiment` ("positive" or "negative")."""
    if sentiment not in ("positive", "negative"):
        raise ValueError(f"sentiment must be 'positive' or 'negative', got {sentiment!r}")
    found = {sentiment_of(w) for w in response.split()} - {None}
    return found == {sentiment} and grammar.well_formed_fraction(prompt + response) == 1.0


def reward(prompts: list[str], responses: list[str], sentiment: list[str]) -> list[float]:
    """The verifiable reward: 1.0 where `success` holds, else 0.0 (`sentiment` is the column)."""
    return [float(success(p, r, s)) for p, r, s in zip(prompts, responses, sentiment, strict=True)]


def mentions(prompts: list[str], responses: list[str], sentiment: list[str]) -> list[float]:
    """A gameable rule, for showing reward hacking: the number of target-sentiment words in the
    response (up to MENTIONS_CAP), no grammar check. Repeating one word maximises it."""
    return [float(min(sum(sentiment_of(w) == s for w in r.split()), MENTIONS_CAP))
            for r, s in zip(responses, sentiment, strict=True)]


# ----------------------------------------------------------------------------- the prompts


def task_record(review: str) -> dict[str, str] | None:
    """{"prompt", "sentiment"} from a review: its first sentence cut just after the first sentiment
    word (the cue); None when the first sentence has none or the cue is its first word."""
    words = review.split(" ")
    for i, w in enumerate(words):
        if w in grammar.TERMINATORS:
            return None
        if (s := sentiment_of(w)) is not None:
            return {"prompt": " ".join(words[: i + 1]), "sentiment": s} if i > 0 else None
    return None


def records(seed: int) -> dict[str, list[dict[str, str]]]:
    """Distinct prompts for each split (SIZES), from reviews of one sentiment each (positivity 0
    or 1, drawn evenly) in the stream (seed, "verifiable"); a prompt is held out by `corpus.is_eval_prompt`."""
    rng = corpus.stream(seed, "verifiable")
    out: dict[str, dict[str, dict]] = {name: {} for name in NAMES}
    for _ in range(MAX_DRAWS):
        if all(len(out[n]) >= SIZES[n] for n in NAMES):
            return {n: list(v.values()) for n, v in out.items()}
        rec = task_record(grammar.sample_review(rng, positivity=float(rng.random() < 0.5)))
        if rec is None:
            continue
        name = "verifiable_eval" if corpus.is_eval_prompt(rec["prompt"]) else "verifiable_train"
        if len(out[name]) < SIZES[name]:
            out[name].setdefault(rec["prompt"], rec)
    raise RuntimeError(f"verifiable task: fewer distinct prompts than {SIZES} in {MAX_DRAWS} reviews")


def folder(lab: Path) -> Path:
    """`<lab>/verifiable-<hash>`: another version of this file writes another folder."""
    from rlhfkit.lab.spec import digest

    return lab / f"verifiable-{digest(Path(__file__).read_bytes())}"


def data_file(name: str, lab: str | Path | None = None) -> Path:
    """Path of `verifiable_train` / `verifiable_eval` in `lab` (default: the default lab, built if
    needed), generated on first use from the lab's seed and written atomically."""
    from rlhfkit.lab.build import ensure_lab
    from rlhfkit.lab.layout import read_manifest

    if name not in NAMES:
        raise KeyError(f"unknown verifiable data file {name!r}; choose from {', '.join(NAMES)}")
    lab = ensure_lab() if lab is None else Path(lab)
    path = folder(lab) / f"{name}.jsonl"
    if not path.is_file():
        seed = int((read_manifest(lab) or {}).get("seed", 0))
        path.parent.mkdir(parents=True, exist_ok=True)
        for n, rows in records(seed).items():  # both splits at once: they are drawn together
            tmp = path.parent / f".{n}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
            write_jsonl(tmp, rows)
            os.replace(tmp, path.parent / f"{n}.jsonl")  # a concurrent writer writes the same bytes
    return path
