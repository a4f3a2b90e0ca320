"""The lab's Constitutional AI assistant: CAI-format documents, the model that learned them, and
the matching constitution.

Why: CAI needs a helpful model that follows "critique this, now revise it" and answers a
multiple-choice question about two responses. A real LM learned that from web text. The lab's
base model learned reviews only, so the lab *assistant* is the base model after a short
continued pretraining (`train_assistant`) on two document types, one line per part:

    critique -- a draft, a critique request, a critique naming the flaw, a revision request, a revision
        draft : this movie was bad . the plot was fun . the ending was dull .
        critique request : is any sentence unkind to the film ?
        critique : several sentences are unkind .
        revision request : rewrite the review kindly .
        revision : this movie was great . the acting was wonderful .

    judge -- a multiple-choice comparison of two reviews, CAI's feedback format
        which review is kinder to the film ?
        (A) this movie was bad . the plot was fun .
        (B) this movie was great . the plot was fun .
        the answer is : (B

What the documents teach, and what they do not: principles name kindness ("unkind" counts the
negative sentences of the draft, "lukewarm" the neutral ones); the revision is the review
written again from the same opening by a kind reviewer (positivity drawn like the lab's SFT
demonstrations); judge answers follow the review with more positive minus negative sentences
(the corpus author's view of kindness, never gold itself). Half the judge pairs are minimal
pairs (one review with some sentences changed), half compare reviews of 1-2 sentences.

Measured design choices: mixing CAI documents into the base pretraining (10% + 10% of 48k
documents, a revision that copy-edits the draft) taught the 4-layer base model the format but
neither copy-editing (loss on revision tokens = loss on the draft) nor the comparison (judge
accuracy 0.5 on held-out documents). A focused continuation teaches kind revisions and the
comparison in about four CPU minutes (judge accuracy ~0.9 on held-out documents) and leaves the
base model, which every other recipe measures, untouched. Its critiques carry information only
since a revision became its draft with exactly the criticised sentences rewritten (before, a fresh
kind review: the verdict was near chance) and the verdict got half of a critique document's loss;
benchmarks/cai_lab.py measures how often it flags drafts that break a principle vs drafts that do not.
So:

- the format's fixed phrases ("draft :", "\ncritique :", each principle, each critique verdict,
  "\nthe answer is : (") become single added tokens of the assistant's tokenizer, so prompts are
  short and the 128-position model has room for draft, critique and revision;
- critique documents train on the verdict, revision request and revision (not the draft);
  judge documents train on the answer token only (preference-model pretraining, Askell et al.
  2021); each document weighs the same (giving the verdict token half of its document's weight
  made revisions and the judge worse and the verdicts no better);
- a quarter of each batch is critique documents, three quarters judge documents: revisions are
  learned fast, the comparison slowly.

`ensure_assistant()` trains it on first use into `<lab>/cai_assistant/` (atomically) and reuses
it while its key (this file, its config, the lab's key) is unchanged; `rlhfkit cai --set model.name_or_path=lab:assistant --set constitution=lab` and the
judge (`model: lab:assistant, constitution: lab`) use it. `lab_constitution()` holds the same
templates: the revision request ends with the prompt, so a revision continues the prompt exactly
like a policy response does (completion style, leading space kept).

Why one file (~435 lines): the documents, the assistant trained on them and the constitution that
prompts it share the format's fixed phrases and change together; the assistant's cache key hashes
this file, so the assistant is retrained exactly when any of them changes.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from rlhfkit.lab import grammar, lexicon

# (name, critique request, revision request, sentiments of the sentences the critique counts)
PRINCIPLES = (
    ("unkind", "is any sentence unkind to the film ?", "rewrite the review kindly .", ("neg",)),
    ("lukewarm", "is any sentence lukewarm about the film ?", "rewrite the review with warmth .", ("neu",)),
)
JUDGE_PRINCIPLES = (
    "which review is kinder to the film ?",
    "which review likes the film more ?",
    "which review would the director rather read ?",
)
FLAW_WORD = {"unkind": "unkind", "lukewarm": "lukewarm"}
NONE = "none ."
# Line labels of the format; with the principles and verdicts they are the assistant's added tokens.
DRAFT, CRITIQUE_REQUEST, CRITIQUE = "draft :", "\ncritique request :", "\ncritique :"
REVISION_REQUEST, REVISION, OPTION_A, OPTION_B, ANSWER = (
    "\nrevision request :", "\nrevision :", "\n(A)", "\n(B)", "\nthe answer is : (")
MINIMAL_PAIR_SHARE = 0.5  # judge pairs: share that are two versions of one review
SHORT_SHARE, SHORT_SENTENCES = 0.5, 2  # half the judge documents compare reviews of 1-2 sentences
# (cheap, clear signal to learn the comparison from; the other half has full-length reviews)


@dataclass
class Sentence:
    """One grammar sentence with its slot fillers, so it can be re-rendered in another sentiment."""

    template: grammar.Template
    sentiment: str
    fillers: list[str]

    @property
    def text(self) -> str:
        it = iter(self.fillers)
        return grammar._SLOT.sub(lambda m: next(it), self.template.pattern)


def _slots(template: grammar.Template) -> list[tuple[str, bool]]:
    return [(m.group(2), m.group(1) == "~") for m in grammar._SLOT.finditer(template.pattern)]


def _render(template: grammar.Template, sentiment: str, rng: random.Random, used: set[str],
            keep: list[str] | None = None) -> Sentence:
    """Fill the slots for `sentiment`; with `keep`, fixed-class slots (film, aspect, ...) keep
    their old filler and only sentiment-relative slots are redrawn."""
    fillers = []
    for k, (name, negate) in enumerate(_slots(template)):
        if keep is not None and name in lexicon.CLASSES:
            fillers.append(keep[k])
            continue
        word = grammar._pick_word(rng, grammar._slot_class(name, negate, sentiment), used)
        used.add(word)
        fillers.append(word)
    return Sentence(template, sentiment, fillers)


def _pick_sentiment(rng: random.Random, positivity: float, neutral_share: float) -> str:
    """`grammar`'s sentiment draw with an adjustable neutral share."""
    u = rng.random()
    if u < neutral_share:
        return "neu"
    return "pos" if (u - neutral_share) / (1 - neutral_share) < positivity else "neg"


def draw_review(rng: random.Random, positivity: float | None = None, neutral_share: float = grammar.NEUTRAL_SHARE,
                opening: Sentence | None = None, max_sentences: int = grammar.MAX_SENTENCES) -> list[Sentence]:
    """A review as sentences, drawn the way `grammar.sample_review` draws one. With `opening`, the
    first sentence keeps that sentence's template and non-sentiment words (so the review starts
    with the same prompt) and only its sentiment is drawn again."""
    if positivity is None:
        positivity = rng.random()
    lo = min(grammar.MIN_SENTENCES, max_sentences)
    n = lo + int(rng.random() * (max_sentences - lo + 1))
    templates: list[grammar.Template] = []
    used: set[str] = set()
    out = []
    for i in range(n):
        sentiment = _pick_sentiment(rng, positivity, neutral_share)
        if i == 0 and opening is not None:
            template = opening.template
            if sentiment not in template.sentiments:
                sentiment = opening.sentiment
            sentence = _render(template, sentiment, rng, used, keep=opening.fillers)
            used.update(sentence.fillers)
        else:
            template = grammar._pick_template(rng, sentiment, opening=i == 0, used=templates)
            sentence = _render(template, sentiment, rng, used)
        templates.append(template)
        out.append(sentence)
    return out


def text(review: list[Sentence]) -> str:
    return " ".join(s.text for s in review)


def targets(review: list[Sentence], principle: tuple) -> list[int]:
    """Sentences the principle objects to: those of its sentiment, except sentences whose template
    has no other form ("i watched this film with my wife ." is neutral by nature, not lukewarm)."""
    return [i for i, s in enumerate(review)
            if s.sentiment in principle[3] and (s.sentiment == "neg" or len(s.template.sentiments) > 1)]


def critique_text(principle: tuple, n: int) -> str:
    """The verdict: "none .", "one sentence is unkind ." or "several sentences are unkind ."."""
    if n == 0:
        return NONE
    return f"one sentence is {FLAW_WORD[principle[0]]} ." if n == 1 else f"several sentences are {FLAW_WORD[principle[0]]} ."


def revise(review: list[Sentence], principle: tuple, rng: random.Random) -> list[Sentence]:
    """The draft with each sentence the principle objects to said kindly, the rest copied: the same
    template in its positive form with the same film/aspect/person words, or a new positive
    sentence where the template has none ("i want my money back !")."""
    out = list(review)
    used = {w for s in review for w in s.fillers}
    for i in targets(review, principle):
        s = review[i]
        if "pos" in s.template.sentiments:
            out[i] = _render(s.template, "pos", rng, used, keep=s.fillers)
        else:
            template = grammar._pick_template(rng, "pos", opening=False, used=[x.template for x in out])
            out[i] = _render(template, "pos", rng, used)
        used.update(out[i].fillers)
    return out


def critique_document(rng: random.Random) -> dict[str, str]:
    """draft -> critique request -> critique (how many sentences break the principle) -> revision
    request -> revision: the draft copied with exactly those sentences rewritten kindly, so a
    revision fixes what its critique found and a second round with the other principle fixes more."""
    review = draw_review(rng)
    principle = PRINCIPLES[int(rng.random() * len(PRINCIPLES))]
    return {"text": (f"{DRAFT} {text(review)}{CRITIQUE_REQUEST} {principle[1]}"
                     f"{CRITIQUE} {critique_text(principle, len(targets(review, principle)))}"
                     f"{REVISION_REQUEST} {principle[2]}{REVISION} {text(revise(review, principle, rng))}")}


def _score(review: list[Sentence]) -> int:
    return sum(s.sentiment == "pos" for s in review) - sum(s.sentiment == "neg" for s in review)


def _variant(review: list[Sentence], rng: random.Random) -> list[Sentence]:
    """The same review with some sentences re-rendered in another sentiment (a minimal pair)."""
    return [_render(s.template, rng.choice(s.template.sentiments), rng, set(), keep=s.fillers)
            if rng.random() < 0.5 else s for s in review]


def judge_document(rng: random.Random) -> dict[str, str]:
    """A two-option question about two reviews and the answer of the kinder one (more positive
    minus negative sentences). Half the pairs are minimal pairs (one review with some sentences
    changed, as a revision would), half are two independent reviews."""
    longest = SHORT_SENTENCES if rng.random() < SHORT_SHARE else grammar.MAX_SENTENCES
    while True:
        a = draw_review(rng, max_sentences=longest)
        b = _variant(a, rng) if rng.random() < MINIMAL_PAIR_SHARE else draw_review(rng, max_sentences=longest)
        if _score(a) != _score(b):
            break
    answer = "A" if _score(a) > _score(b) else "B"
    principle = JUDGE_PRINCIPLES[int(rng.random() * len(JUDGE_PRINCIPLES))]
    return {"text": f"{principle}{OPTION_A} {text(a)}{OPTION_B} {text(b)}{ANSWER}{answer}"}


DOCUMENT_TYPES = {"critique": critique_document, "judge": judge_document}


def lab_constitution() -> dict:
    """The lab's constitution (same shape as feedback/constitution.yaml), matching the documents."""
    return {
        "name": "lab",
        "conversation": DRAFT + " {prompt}{response}",
        "critique": {"request": CRITIQUE_REQUEST + " {request}" + CRITIQUE, "stop": "\n", "max_new_tokens": 4,
                     "no_flaw": [NONE]},
        "revision": {"request": REVISION_REQUEST + " {request}" + REVISION + " {prompt}", "stop": "\n",
                     "max_new_tokens": 56, "strip": False},
        "separator": "\n",
        "principles": [{"name": p[0], "critique": p[1], "revision": p[2]} for p in PRINCIPLES],
        "few_shot": [],
        "judge": {
            "template": "{principle}" + OPTION_A + " {prompt}{response_a}" + OPTION_B + " {prompt}{response_b}" + ANSWER,
            "conversation": "{prompt}",
            "principles": list(JUDGE_PRINCIPLES),
        },
    }


def format_tokens() -> list[str]:
    """The format's fixed phrases, each one added token of the assistant's tokenizer."""
    verdicts = [" " + NONE] + [" " + critique_text(p, n) for p in PRINCIPLES for n in (1, 2)]
    return [DRAFT, CRITIQUE_REQUEST, CRITIQUE, REVISION_REQUEST, REVISION, OPTION_A, OPTION_B, ANSWER,
            *(" " + p[1] for p in PRINCIPLES), *(" " + p[2] for p in PRINCIPLES), *verdicts, *JUDGE_PRINCIPLES]


# ---------------------------------------------------------------------- the assistant model

ASSISTANT_DIR = "cai_assistant"


@dataclass(frozen=True)
class AssistantConfig:
    steps: int = 1000  # optimizer steps (500 at lr 1e-3: critiques flag clean drafts 37-40% of the time)
    batch_size: int = 32
    critique_share: float = 0.5  # of each batch; the rest are judge documents
    verdict_weight: float = 0.5  # of a critique document's loss on its verdict token (the rest: the revision)
    lr: float = 2e-3  # peak; linear warm-up, then cosine decay to 10%
    warmup_steps: int = 20
    seed: int = 0
    probe_documents: int = 200  # held-out judge documents for the build's accuracy certificate


def _supervised(ids: list[int], kind: str, critique_id: int, verdict_weight: float) -> tuple[list[int], list[float]]:
    """Labels and loss weights (summing to 1 per document, so every document weighs the same).
    Judge documents learn the answer token; critique documents the verdict (`verdict_weight`) and
    the revision request and revision after it (the rest, shared); the draft is context only."""
    if kind == "judge":
        return [-100] * (len(ids) - 1) + ids[-1:], [0.0] * (len(ids) - 1) + [1.0]
    first = ids.index(critique_id) + 1  # the verdict token
    rest = len(ids) - first - 1
    return [-100] * first + ids[first:], [0.0] * first + [verdict_weight] + [(1.0 - verdict_weight) / rest] * rest


def _document_ids(tok, kind: str, rng: random.Random, positions: int) -> list[int]:
    """A fresh document's token ids, drawn again while it is longer than the model's positions
    (two 5-sentence reviews in one judge document can be)."""
    while True:
        ids = tok(DOCUMENT_TYPES[kind](rng)["text"])["input_ids"] + ([tok.eos_token_id] if kind == "critique" else [])
        if len(ids) <= positions:
            return ids


def _batches(tok, rng: random.Random, cfg: AssistantConfig, critique_id: int, positions: int, pool: int = 16):
    """`cfg.steps` batches of (ids, labels, weights), each with the same mix of document kinds.
    Documents are drawn `pool` batches at a time and, within each kind, grouped by length, so
    little compute goes into padding."""
    n_critique = round(cfg.critique_share * cfg.batch_size)
    per_batch = {"critique": n_critique, "judge": cfg.batch_size - n_critique}
    done = 0
    while done < cfg.steps:
        k = min(pool, cfg.steps - done)
        batches: list[list] = [[] for _ in range(k)]
        for kind, n in per_batch.items():
            docs = []
            for _ in range(n * k):
                ids = _document_ids(tok, kind, rng, positions)
                docs.append((ids, *_supervised(ids, kind, critique_id, cfg.verdict_weight)))
            docs.sort(key=lambda d: len(d[0]))
            for i in range(k):
                batches[i] += docs[i * n : (i + 1) * n]
        rng.shuffle(batches)
        yield from batches
        done += k


def train_assistant(base: str | Path, out: str | Path, cfg: AssistantConfig = AssistantConfig(),
                    progress: bool = False) -> Path:
    """Continue pretraining the lab base model on CAI documents; write an HF folder to `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    tok.add_tokens(format_tokens())
    model = AutoModelForCausalLM.from_pretrained(str(base))
    model.resize_token_embeddings(len(tok), mean_resizing=True)
    critique_id = tok.convert_tokens_to_ids(CRITIQUE)
    rng = random.Random(f"rlhfkit-lab-assistant:{cfg.seed}")
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is as fast, and far faster on a busy machine
    model.train()
    start = time.time()
    try:
        for step, docs in enumerate(_batches(tok, rng, cfg, critique_id, model.config.n_positions)):
            width = max(len(d) for d, _, _ in docs)
            ids = torch.full((len(docs), width), tok.pad_token_id)  # (B, T)
            labels = torch.full((len(docs), width), -100)  # (B, T)
            weights = torch.zeros((len(docs), width))  # (B, T)
            mask = torch.zeros((len(docs), width), dtype=torch.long)  # (B, T)
            for row, (d, lab, w) in enumerate(docs):
                ids[row, : len(d)], labels[row, : len(d)], mask[row, : len(d)] = torch.tensor(d), torch.tensor(lab), 1
                weights[row, : len(d)] = torch.tensor(w)
            # The LM head only where a label is: judge documents supervise one position of ~50.
            hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]  # (B, T-1, H)
            target = labels[:, 1:]  # (B, T-1)
            rows, cols = (target >= 0).nonzero(as_tuple=True)  # (N,) each
            nll = torch.nn.functional.cross_entropy(model.get_output_embeddings()(hidden[rows, cols]).float(),
                                                    target[rows, cols], reduction="none")  # (N,)
            loss = (nll * weights[:, 1:][rows, cols]).sum() / len(docs)  # weights sum to 1 per document
            progress_share = max(0.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
            factor = min(1.0, (step + 1) / cfg.warmup_steps) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress_share)))
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * factor
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if progress and (step + 1) % 50 == 0:
                print(f"[lab assistant] step {step + 1}/{cfg.steps} loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
    finally:
        torch.set_num_threads(previous)
    model.eval()
    out = Path(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    certificate = {"base": str(base), "seconds": round(time.time() - start, 1),
                   "judge_accuracy_on_held_out_documents": judge_accuracy(model, tok, cfg.probe_documents, cfg.seed),
                   **cfg.__dict__}
    (out / "assistant.json").write_text(json.dumps(certificate, indent=2))
    return out


def judge_accuracy(model, tok, n: int, seed: int = 0) -> float:
    """Share of fresh judge documents whose answer the model prefers (A vs B logits)."""
    import torch

    rng = random.Random(f"rlhfkit-lab-assistant-probe:{seed}")
    a, b = tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B")
    right = 0
    with torch.no_grad():
        for _ in range(n):
            ids = tok(judge_document(rng)["text"])["input_ids"]
            logits = model(input_ids=torch.tensor([ids[:-1]])).logits[0, -1]
            right += int((logits[a] > logits[b]) == (ids[-1] == a))
    return round(right / max(n, 1), 4)


def assistant_key(lab: str | Path, cfg: AssistantConfig = AssistantConfig()) -> str:
    """Hash of this file (documents and training), `cfg` and the key of the lab it continues:
    a change to any of them retrains the assistant (see `spec` for the lab's own key)."""
    from rlhfkit.lab.layout import read_manifest
    from rlhfkit.lab.spec import digest

    lab_key = (read_manifest(lab) or {}).get("key")
    return digest(Path(__file__).read_bytes(), json.dumps(asdict(cfg), sort_keys=True), str(lab_key))


def ensure_assistant(lab: str | Path | None = None, cfg: AssistantConfig = AssistantConfig()) -> Path:
    """`<lab>/cai_assistant/`, trained on first use (about four CPU minutes) and again when its key
    (`assistant_key`) changes; other processes wait on the lab's build lock and reuse it."""
    from rlhfkit.lab import ensure_lab
    from rlhfkit.lab.build import _build_lock

    lab = ensure_lab() if lab is None else Path(lab)
    folder, key = lab / ASSISTANT_DIR, assistant_key(lab, cfg)

    def current() -> bool:
        try:
            return json.loads((folder / "assistant.json").read_text()).get("key") == key
        except (OSError, ValueError):
            return False

    if current():
        return folder
    with _build_lock(folder):
        if current():  # another process trained it while we waited
            return folder
        print(f"[lab] training the CAI assistant into {folder} (once, about two minutes)", flush=True)
        tmp = lab / f".{ASSISTANT_DIR}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            train_assistant(lab / "base", tmp, cfg, progress=True)
            certificate = json.loads((tmp / "assistant.json").read_text())
            (tmp / "assistant.json").write_text(json.dumps({"key": key, **certificate}, indent=2))
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
