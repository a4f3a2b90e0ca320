"""The lab grammar: short movie reviews from fixed sentence templates with word-class slots.

Why a grammar and not real reviews: the lab must be tiny, offline and exactly known.
A template grammar gives (1) text a 1M-parameter LM learns in two CPU minutes, and
(2) an exact recogniser, so the gold judge can tell "natural" text from the degenerate
text a reward-hacking policy drifts into.

Format: lowercase words separated by single spaces; punctuation ("." "," "!") is its own
token, e.g. "the acting was wonderful . i loved every minute of it !". A review is 2-5
sentences; the first comes from an *opening* template, whose first few words are the
prompt (`split_prompt`).

Templates are token strings with slots:
- `{aspect}` draws from `lexicon.CLASSES["aspect"]`;
- `{adj}` is sentiment-relative: it draws from `adj_pos` / `adj_neg` / `adj_neu`
  according to the sentence's sentiment;
- `{~adj}` draws from the *opposite* sentiment (contrastive "X was bad , but Y was great").

The recogniser compiles every template to a regex of word alternations from the same
tables, so everything the generator emits is recognised. It checks syntax only: a
sentiment-relative slot accepts any sentiment (see `sentence_is_well_formed`).
"""

from __future__ import annotations

import functools
import re
from bisect import bisect
from dataclasses import dataclass
from itertools import accumulate
from typing import Protocol

from rlhfkit.lab import lexicon

SENTIMENTS = ("pos", "neg", "neu")
OPPOSITE = {"pos": "neg", "neg": "pos"}
TERMINATORS = ".!?"
NEUTRAL_SHARE = 0.2  # share of neutral sentences in a review, whatever its positivity
EXCLAIM_WEIGHT = 0.3  # relative weight of "!" templates; at most one of them a review
MIN_SENTENCES, MAX_SENTENCES = 2, 5
MAX_PROMPT_WORDS = 8
ZIPF_EXPONENT = 0.8  # word k of a class has weight 1/(k+1)^0.8: a few words dominate
REDRAWS = 8  # tries to find a filler not yet used in the review


class Uniform(Protocol):
    """Anything with `.random() -> float in [0, 1)`: `random.Random` or a numpy Generator.

    The grammar only needs uniforms; `random.Random` is ~10x faster per call than numpy,
    which matters when generating tens of thousands of reviews for pretraining.
    """

    def random(self) -> float: ...


@dataclass(frozen=True)
class Template:
    """One sentence pattern; `sentiments` lists the sentiments it can be rendered with."""

    pattern: str
    sentiments: tuple[str, ...]
    opening: bool = False  # may start a review (and so give a prompt)
    body: bool = True  # may appear after the first sentence

    @property
    def exclaims(self) -> bool:
        return self.pattern.endswith("!")


def _t(pattern: str, sentiments: str = "pne", opening: bool = False, body: bool = True):
    codes = {"p": "pos", "n": "neg", "e": "neu"}
    return Template(pattern, tuple(codes[c] for c in sentiments), opening, body)


TEMPLATES: tuple[Template, ...] = (
    # openings: their first words (before any sentiment word) become prompts
    _t("this {film} was {degree} {adj} .", opening=True),
    _t("this {film} is {quality} .", opening=True),
    _t("i watched this {film} with my {companion} {when} .", "e", opening=True, body=False),
    _t("i watched this {film} with my {companion} and we both {verb} it .", opening=True, body=False),
    _t("the {aspect} of this {film} was {degree} {adj} .", opening=True),
    _t("my {companion} and i saw this {film} {when} .", "e", opening=True, body=False),
    _t("i had {expectation} expectations for this {film} .", "e", opening=True, body=False),
    _t("what a {adj} {film} !", "pn", opening=True),
    _t("i went to see this {film} {when} and it was {adj} .", opening=True, body=False),
    _t("this {film} {effect} .", opening=True),
    # body sentences
    _t("the {aspect} was {degree} {adj} ."),
    _t("the {aspect} was {adj} ."),
    _t("the {aspect} was {adj} and the {aspect} was {adj} .", "pn"),
    _t("the {aspect} was {~adj} , but the {aspect} was {adj} .", "pn"),
    _t("i thought the {aspect} was {degree} {adj} ."),
    _t("i thought it was {quality} ."),
    _t("the {person} did a {adj} job .", "pn"),
    _t("the {aspect} {effect} ."),
    _t("the performance of the {person} was {degree} {adj} ."),
    _t("the {aspect} , the {aspect} and the {aspect} were all {adj} ."),
    _t("it was {adj} , {adj} and {adj} .", "pn"),
    _t("i would {recommend} recommend it to {audience} ."),
    _t("i give it {score} out of ten ."),
    _t("overall , it was {quality} ."),
    _t("{interjection} !", "pn"),
    _t("it is {degree} {adj} for {genre} ."),
    _t("i {verb} every minute of it ."),
    _t("the {aspect} felt {adj} ."),
    _t("i can not wait to see it again !", "p"),
    _t("i want my money back !", "n"),
    _t("my {companion} {verb} it too ."),
    _t("even the {aspect} was {adj} .", "pn"),
    _t("the {film} is {degree} {adj} from start to finish .", "pn"),
    _t("in the end , the {person} made it {adj} ."),
    _t("it is {genre} at its core .", "e"),
    _t("i have seen many films and this one is {degree} {adj} .", "pn"),
)

_SLOT = re.compile(r"\{(~?)(\w+)\}")


def _slot_class(name: str, negate: bool, sentiment: str) -> str:
    """Resolve a slot to a lexicon class: fixed classes as is, relative ones by sentiment."""
    if name in lexicon.CLASSES:
        return name
    return f"{name}_{OPPOSITE[sentiment] if negate else sentiment}"


# ---------------------------------------------------------------- generation


@functools.cache
def _cumulative_weights(cls: str) -> tuple[list[float], float]:
    weights = [1.0 / (k + 1) ** ZIPF_EXPONENT for k in range(len(lexicon.CLASSES[cls]))]
    cum = list(accumulate(weights))
    return cum, cum[-1]


def _pick_word(rng: Uniform, cls: str, avoid: set[str]) -> str:
    """A Zipf-weighted word of `cls`, redrawn (a few times) while it is in `avoid`."""
    cum, total = _cumulative_weights(cls)
    words = lexicon.CLASSES[cls]
    for _ in range(REDRAWS):
        word = words[min(bisect(cum, rng.random() * total), len(cum) - 1)]
        if word not in avoid:
            break
    return word


def render(template: Template, sentiment: str, rng: Uniform, used: set[str] | None = None) -> str:
    """Fill every slot of `template` for `sentiment`, drawing words with Zipf weights.

    `used` collects the fillers already in the review: they are avoided so a natural
    review does not say "the acting , the acting and the acting" (repetition is what the
    gold judge penalises, so the clean corpus must be free of it).
    """
    used = set() if used is None else used

    def fill(m: re.Match) -> str:
        word = _pick_word(rng, _slot_class(m.group(2), m.group(1) == "~", sentiment), used)
        used.add(word)
        return word

    return _SLOT.sub(fill, template.pattern)


def _pick_sentiment(rng: Uniform, positivity: float) -> str:
    u = rng.random()
    if u < NEUTRAL_SHARE:
        return "neu"
    return "pos" if (u - NEUTRAL_SHARE) / (1 - NEUTRAL_SHARE) < positivity else "neg"


def _pick_template(rng: Uniform, sentiment: str, opening: bool, used: list[Template]):
    """A template for the next sentence: never one already used in this review (so natural
    reviews never repeat a sentence) and at most one "!" template per review."""
    exclaimed = any(t.exclaims for t in used)
    options = [
        t for t in TEMPLATES
        if sentiment in t.sentiments
        and (t.opening if opening else t.body)
        and not (exclaimed and t.exclaims)
        and t not in used
    ]
    weights = list(accumulate(EXCLAIM_WEIGHT if t.exclaims else 1.0 for t in options))
    return options[min(bisect(weights, rng.random() * weights[-1]), len(options) - 1)]


def sample_review(rng: Uniform, positivity: float | None = None) -> str:
    """One review of 2-5 sentences.

    `positivity` in [0, 1] is the chance a non-neutral sentence is positive (20% of
    sentences are neutral regardless). None draws a positivity per review, uniform in
    [0, 1], giving the mixed corpus the base model is pretrained on.
    """
    if positivity is None:
        positivity = rng.random()
    n_sentences = MIN_SENTENCES + int(rng.random() * (MAX_SENTENCES - MIN_SENTENCES + 1))
    sentences, templates, words = [], [], set()
    for i in range(n_sentences):
        sentiment = _pick_sentiment(rng, positivity)
        template = _pick_template(rng, sentiment, opening=i == 0, used=templates)
        templates.append(template)
        sentences.append(render(template, sentiment, rng, words))
    return " ".join(sentences)


# ---------------------------------------------------------------- prompts


@functools.cache
def sentiment_words() -> frozenset[str]:
    """Words that only occur in sentiment-specific classes (never in neutral ones or literals).

    A prompt stops before the first of these, so prompts are sentiment-free openings and
    the response decides how the review turns out.
    """
    sentimental, neutral = set(), set()
    for name, words in lexicon.CLASSES.items():
        target = sentimental if name.endswith(("_pos", "_neg")) else neutral
        for phrase in words:
            target.update(phrase.split())
    return frozenset(sentimental - neutral - literal_words())


def split_prompt(review: str, rng: Uniform) -> tuple[str, str]:
    """Split a review into (prompt, response) with prompt + response == review.

    The prompt is the first 2-6 words of the first sentence, cut before its first
    sentiment word and leaving at least one word of that sentence to the response.
    The response starts with " " so that tokenising prompt and response separately
    equals tokenising the whole (byte-level BPE attaches the space to the next word).
    """
    words = review.split(" ")
    first_len = next((i for i, w in enumerate(words) if w in TERMINATORS), len(words))
    neutral_len = next(
        (i for i, w in enumerate(words[:first_len]) if w in sentiment_words()), first_len
    )
    hi = max(1, min(MAX_PROMPT_WORDS, neutral_len, first_len - 1))
    lo = min(2, hi)
    k = lo + int(rng.random() * (hi - lo + 1))
    prompt = " ".join(words[:k])
    return prompt, review[len(prompt):]


# ---------------------------------------------------------------- recognition


def _slot_words(name: str) -> list[str]:
    """Every filler a slot accepts when recognising: all sentiments of a relative slot."""
    classes = [name] if name in lexicon.CLASSES else [f"{name}_{s}" for s in SENTIMENTS]
    return [w for c in classes if c in lexicon.CLASSES for w in lexicon.CLASSES[c]]


def _template_regex(template: Template) -> str:
    parts = []
    for piece in re.split(r"(\{~?\w+\})", template.pattern):
        slot = _SLOT.fullmatch(piece)
        if slot:
            words = sorted(set(_slot_words(slot.group(2))), key=len, reverse=True)
            parts.append("(?:" + "|".join(map(re.escape, words)) + ")")
        else:
            parts.append(re.escape(piece))
    return "".join(parts)


@functools.cache
def _sentence_regex() -> re.Pattern:
    return re.compile("(?:" + "|".join(dict.fromkeys(map(_template_regex, TEMPLATES))) + ")")


def sentence_is_well_formed(sentence: str) -> bool:
    """True when the sentence fits a template, each slot holding a word of its class.

    Recognition is syntactic: a sentiment-relative slot accepts a word of any sentiment,
    so "the plot was great and the acting was dull" is well-formed even though the
    generator keeps one sentiment per clause pair. Judging sentiment is VADER's job in the
    gold score; agreement across slots is too subtle for a 1M-parameter LM trained for a
    minute and would make most of its natural-looking samples count as malformed.
    Everything the generator emits is accepted (tested on thousands of reviews).
    """
    return _sentence_regex().fullmatch(sentence.strip()) is not None


_SENTENCE_SPLIT = re.compile(r"[^.!?]*[.!?]|[^.!?]+$")


def split_sentences(text: str) -> list[str]:
    """Sentences ending in . ! or ?, plus any unterminated trailing fragment; blanks dropped."""
    return [s.strip() for s in _SENTENCE_SPLIT.findall(text) if s.strip()]


def well_formed_fraction(text: str) -> float:
    """Fraction of sentences the grammar can generate (0.0 for empty text).

    An unterminated trailing fragment counts as a sentence that is not well-formed, so a
    response cut off mid-sentence, or one that never ends, is penalised.
    """
    sentences = split_sentences(text)
    if not sentences:
        return 0.0
    return sum(map(sentence_is_well_formed, sentences)) / len(sentences)


@functools.cache
def literal_words() -> frozenset[str]:
    """Tokens written into the templates themselves ("the", "was", ",", ".")."""
    return frozenset(w for t in TEMPLATES for w in _SLOT.sub(" ", t.pattern).split())


def vocabulary() -> set[str]:
    """Every token the grammar can emit (used to train the tokenizer and in tests)."""
    words = {w for phrases in lexicon.CLASSES.values() for p in phrases for w in p.split()}
    return words | literal_words()
