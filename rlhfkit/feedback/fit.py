"""Fit a judge or CAI prompt to a model's context by shortening the texts inside it, never its template.

Why: such a prompt is fixed template text (instructions, the principle, the request, the answer
slot "(") around texts of any length: responses, critiques, revisions. A sampled response can be
as long as the policy's `max_new_tokens`, so on a small model a prompt can outgrow the positions;
the run must neither crash nor silently drop the item, so the texts are shortened and counted.

How: one cap of L tokens for all texts; a text longer than L keeps its first L tokens (a review or
an answer says most at its start, and the template after it, the question and the answer slot,
stays whole). Capping shortens the longest texts first and leaves short ones whole. The largest L
that fits is found by bisection on the encoding of the whole prompt, so tokens merging across a
text's edges and special tokens are counted exactly. Worked examples (CAI's few-shot block) are
copies of the format, not the content under review: `fit_prompt` drops them, first first, before
it shortens any text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from string import Formatter
from typing import Any

from rlhfkit.data.tokenize import encode_prompt


@dataclass(frozen=True)
class Fitted:
    texts: tuple[str, ...]  # the texts, shortened where needed
    truncated: int  # how many of them were shortened


def fit_texts(tokenizer: Any, texts: Sequence[str], length: Callable[[Sequence[str]], int], budget: int
              ) -> Fitted | None:
    """Shorten the longest of `texts`, each from its end, until `length(texts) <= budget`.

    `length` maps candidate texts to the token count of the prompt built from them. None when the
    prompt is too long even with every text empty (its fixed part alone does not fit).
    """
    if length(texts) <= budget:
        return Fitted(tuple(texts), 0)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

    def capped(cap: int) -> list[str]:
        return [t if len(x) <= cap else tokenizer.decode(x[:cap]) for t, x in zip(texts, ids, strict=True)]

    lo, hi = 0, max(map(len, ids))  # invariant: cap lo fits, cap hi does not (hi = the texts as they are)
    if length(capped(lo)) > budget:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if length(capped(mid)) <= budget:
            lo = mid
        else:
            hi = mid
    out = capped(lo)
    return Fitted(tuple(out), sum(a != b for a, b in zip(out, texts, strict=True)))


@dataclass(frozen=True)
class Prompt:
    """Fixed template text around texts that may be shortened: fixed[0] text[0] fixed[1] ... fixed[-1]."""

    fixed: tuple[str, ...] = ("",)
    texts: tuple[str, ...] = ()

    @classmethod
    def fill(cls, template: str, shortenable: set[str], **values: str) -> Prompt:
        """`template.format(**values)`, with the fields named in `shortenable` as texts."""
        out = cls()
        for literal, name, spec, conversion in Formatter().parse(template):
            out = out + cls((literal,))
            if name is not None:
                value = Formatter().format_field(Formatter().convert_field(values[name], conversion), spec or "")
                out = out + (cls.text(value) if name in shortenable else cls((value,)))
        return out

    @classmethod
    def text(cls, text: str) -> Prompt:
        return cls(("", ""), (text,))

    def __add__(self, other: Prompt | str) -> Prompt:
        if isinstance(other, str):
            other = Prompt((other,))
        return Prompt((*self.fixed[:-1], self.fixed[-1] + other.fixed[0], *other.fixed[1:]), self.texts + other.texts)

    def render(self, texts: Sequence[str] | None = None) -> str:
        texts = self.texts if texts is None else texts
        return "".join(f + t for f, t in zip(self.fixed, [*texts, ""], strict=True))


@dataclass(frozen=True)
class FittedPrompt:
    text: str
    dropped: int = 0  # worked examples dropped (from the first)
    truncated: int = 0  # texts shortened

    @property
    def cut(self) -> int:
        """Parts dropped or shortened to fit; 0 = the prompt as built."""
        return self.dropped + self.truncated


def fit_prompt(prompt: Prompt, tokenizer: Any, limit: int | None, examples: Sequence[str] = ()) -> FittedPrompt | None:
    """`"".join(examples) + prompt` in at most `limit` tokens (`encode_prompt`, as it is sampled
    from): first drop examples (first first), then shorten the prompt's texts; None when the
    fixed text alone is too long. `limit` None: no limit."""
    if limit is None:
        return FittedPrompt("".join(examples) + prompt.render())
    for k in range(len(examples) + 1):
        text = "".join(examples[k:]) + prompt.render()
        if len(encode_prompt(tokenizer, text)) <= limit:
            return FittedPrompt(text, dropped=k)
    fitted = fit_texts(tokenizer, prompt.texts, lambda ts: len(encode_prompt(tokenizer, prompt.render(ts))), limit)
    if fitted is None:
        return None
    return FittedPrompt(prompt.render(fitted.texts), dropped=len(examples), truncated=fitted.truncated)
