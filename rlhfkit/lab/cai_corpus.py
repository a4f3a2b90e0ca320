"""Constitutional AI documents for the lab corpus, and the lab's constitution that matches them.

Why: CAI needs a model that can follow "critique this, now revise it" and answer a multiple-
choice question. A real LM learned that from web text; the lab's tiny model learns it from
these documents, mixed into its pretraining corpus, so it can play the helpful model of the
CAI paper on the lab (it was never taught what gold is; it learns the format and the
"kind reviewer" values the principles name).

Two document types, one line per part, in the lab's lowercase token style:

    critique -- a review, a critique request, a critique naming the flaw, a revision request, the revision
        draft : this movie was bad . the plot was fun . the ending was dull .
        critique request : is any sentence unkind to the film ?
        critique : two sentences are unkind .
        revision request : rewrite the unkind sentences kindly .
        revision : this movie was great . the plot was fun . the ending was gripping .

    judge -- a multiple-choice comparison of two reviews, CAI's feedback format
        which review is kinder to the film ?
        (A) this movie was bad . the plot was fun .
        (B) this movie was great . the plot was fun .
        the answer is : (B

Principles: "unkind" objects to negative sentences, "lukewarm" to neutral ones that could be
positive. The critique counts them ("none ." when there are none); the revision re-renders each
of them with positive sentiment (same template, same non-sentiment words) and copies the rest,
so a second round under the other principle has something left to improve. Judge answers
follow the review with more positive minus negative sentences (the corpus author's view, not
gold); half the pairs are minimal pairs (one review, some sentences changed), like a review and
its revision. The draft line is marked ("draft :") so the model keeps writing plain reviews,
ending in EOS, everywhere else.

`lab_constitution()` gives the same templates and principles to `rlhfkit cai` and the AI judge
(`--set constitution=lab`): the revision request ends with the prompt, so a sampled revision
continues the prompt exactly like a policy response does (completion style, leading space kept).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rlhfkit.lab import grammar, lexicon

# (name, critique request, revision request, sentences the critique counts, the revision's
# share of neutral sentences)
PRINCIPLES = (
    ("unkind", "is any sentence unkind to the film ?", "rewrite the review kindly .", ("neg",), grammar.NEUTRAL_SHARE),
    ("lukewarm", "is any sentence lukewarm about the film ?", "rewrite the review with warmth .", ("neu",), 0.05),
)
REVISION_MIN_POSITIVITY = 0.85  # revisions are as positive as the lab's SFT demonstrations
JUDGE_PRINCIPLES = (
    "which review is kinder to the film ?",
    "which review likes the film more ?",
    "which review would the director rather read ?",
)
FLAW_WORD = {"unkind": "unkind", "lukewarm": "lukewarm"}
NONE = "none ."
COUNTS = ("one", "two", "three", "four", "five")
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
    """Sentences the principle objects to."""
    return [i for i, s in enumerate(review) if s.sentiment in principle[3]]


def critique_text(principle: tuple, n: int) -> str:
    if n == 0:
        return NONE
    count = COUNTS[min(n, len(COUNTS)) - 1]
    return f"{count} sentence is {FLAW_WORD[principle[0]]} ." if n == 1 else f"{count} sentences are {FLAW_WORD[principle[0]]} ."


def critique_document(rng: random.Random) -> dict[str, str]:
    """draft -> critique request -> critique (how many sentences break the principle) -> revision
    request -> revision: the review written again from the same opening by a kind reviewer
    (positivity drawn like the lab's SFT demonstrations; fewer neutral sentences for "lukewarm")."""
    review = draw_review(rng)
    principle = PRINCIPLES[int(rng.random() * len(PRINCIPLES))]
    positivity = REVISION_MIN_POSITIVITY + (1 - REVISION_MIN_POSITIVITY) * rng.random()
    revised = draw_review(rng, positivity, principle[4], opening=review[0])
    return {"text": (f"draft : {text(review)}\ncritique request : {principle[1]}\n"
                     f"critique : {critique_text(principle, len(targets(review, principle)))}\n"
                     f"revision request : {principle[2]}\nrevision : {text(revised)}")}


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
    return {"text": f"{principle}\n(A) {text(a)}\n(B) {text(b)}\nthe answer is : ({answer}"}


DOCUMENT_TYPES = {"critique": critique_document, "judge": judge_document}


def lab_constitution() -> dict:
    """The lab's constitution (same shape as feedback/constitution.yaml), matching the documents."""
    return {
        "name": "lab",
        "conversation": "draft : {prompt}{response}",
        "critique": {"request": "\ncritique request : {request}\ncritique :", "stop": "\n", "max_new_tokens": 40},
        "revision": {"request": "\nrevision request : {request}\nrevision : {prompt}", "stop": "\n",
                     "max_new_tokens": 72, "strip": False},
        "separator": "\n",
        "principles": [{"name": p[0], "critique": p[1], "revision": p[2]} for p in PRINCIPLES],
        "few_shot": [],
        "judge": {
            "template": "{principle}\n(A) {prompt}{response_a}\n(B) {prompt}{response_b}\nthe answer is : (",
            "conversation": "{prompt}",
            "principles": list(JUDGE_PRINCIPLES),
        },
    }
