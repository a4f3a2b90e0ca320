"""AI judge: any HF causal LM as the feedback model, the way Constitutional AI labels comparisons.

Bai et al. 2022 (CAI, §4.1): show the conversation, a principle and the two responses as a
multiple-choice question, then read the model's next-token probabilities of the answers:

    Consider the following conversation between a human and an assistant:
    Human: {prompt}
    {principle}
    Options:
    (A) {response_a}
    (B) {response_b}
    The answer is: (

    P(A | a, b) = softmax(l_A, l_B)_A = σ(l_A − l_B)      logits of the answer tokens "A", "B"

Position bias cancels by asking in both orders and averaging (order-averaged soft label):

    p(a ≻ b) = ½ [P(A | a, b) + (1 − P(A | b, a))]

then optionally clamp p to [lo, hi] (the paper clamps chain-of-thought labels to 40–60%,
because extreme judge probabilities are poorly calibrated). p is stored as the comparison's
`soft_label` (the probability that `responses[ranking[0]]` wins), which the reward model's
soft Bradley–Terry target reads. One principle is sampled per comparison, from the
constitution's judge principles (or a .txt file of them), and used for both orders.

K > 2 responses: every pair is judged (both orders) and response i scores the mean of its
p(i ≻ j) over the others (an expected win rate); the ranking sorts by that score.

A judge prompt longer than the model's positions has its two responses shortened from their end
(`fit.fit_texts`, the same text in both orders), never the template, the principle or the answer
slot; `PairVerdict.truncated` counts them. Only a prompt that does not fit even with empty
responses is an error (`JudgeContextError`) or, with `skip_too_long`, skipped.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.data.tokenize import encode_prompt, pad_batch
from rlhfkit.errors import UserError
from rlhfkit.feedback.base import Judgement
from rlhfkit.feedback.constitution import Constitution, load_constitution, load_judge_principles
from rlhfkit.feedback.fit import fit_texts

OPTIONS = ("A", "B")


# ---------------------------------------------------------------------- the maths (pure)


def option_probability(logit_a: torch.Tensor, logit_b: torch.Tensor) -> torch.Tensor:
    """P(A) from the two answer-token logits, normalised over {A, B}: σ(l_A − l_B).  (N,)"""
    return torch.sigmoid(logit_a.float() - logit_b.float())


def order_average(p_a_first: torch.Tensor, p_a_swapped: torch.Tensor) -> torch.Tensor:
    """p(a ≻ b) = ½ [P(A | a, b) + (1 − P(A | b, a))]; a constant preference for the slot "A"
    adds to the first term and subtracts from the second, so it cancels.  (N,)"""
    return 0.5 * (p_a_first + (1.0 - p_a_swapped))


def clamp_probability(p: torch.Tensor, bounds: tuple[float, float] | None) -> torch.Tensor:
    """Clamp to [lo, hi] (e.g. (0.4, 0.6)); None leaves p unchanged.  (N,)"""
    if bounds is None:
        return p
    lo, hi = bounds
    return p.clamp(min=lo, max=hi)


def answer_token_ids(tokenizer: Any, text: str, options: tuple[str, ...] = OPTIONS) -> tuple[list[int], list[int]]:
    """(context ids, one answer token id per option) for a prompt that ends where the answer goes.

    Tokenisers differ on how the answer letter joins the text before it ("(A" may be one token,
    " A" and "A" differ), so the text is tokenised with each option appended and the answer
    tokens are the first tokens where those encodings differ; the context is their common prefix.
    """
    encoded = [encode_prompt(tokenizer, text + option) for option in options]
    n = 0
    while all(len(e) > n for e in encoded) and len({e[n] for e in encoded}) == 1:
        n += 1
    if n == 0 or any(len(e) <= n for e in encoded):
        raise ValueError(f"cannot find distinct answer tokens for {options} after the judge prompt "
                         f"(encodings {[e[-3:] for e in encoded]})")
    answers = [e[n] for e in encoded]
    if len(set(answers)) != len(answers):  # pragma: no cover - guarded by the prefix loop
        raise ValueError(f"answer options {options} share a first token")
    return encoded[0][:n], answers


@torch.no_grad()
def next_token_logits(model, contexts: list[list[int]], pad_id: int, batch_size: int = 16) -> list[torch.Tensor]:
    """Logits (V,) of the token after each context; right padding, read at the last real token."""
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    for i in range(0, len(contexts), batch_size):
        chunk = contexts[i : i + batch_size]
        ids = pad_batch(chunk, pad_id, "right").to(device)  # (B, T)
        mask = pad_batch([[1] * len(c) for c in chunk], 0, "right").to(device)  # (B, T)
        logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
        last = torch.tensor([len(c) - 1 for c in chunk], device=device)
        out.extend(logits[torch.arange(len(chunk), device=device), last].float().cpu())
    return out


# ---------------------------------------------------------------------- the annotator


@dataclass(frozen=True)
class PairVerdict:
    """One judged pair: p(a ≻ b) after averaging and clamping, and the raw per-order P(A)."""

    p: float
    p_a_first: float  # P(A | a shown as A, b as B)
    p_a_swapped: float | None  # P(A | b shown as A, a as B); None when only one order was asked
    principle: str
    truncated: int = 0  # responses shortened to fit the judge's context (0, 1 or 2)


class JudgeContextError(UserError):
    """A judge prompt whose template, principle and prompt alone exceed the judge model's positions."""


class AIJudge:
    """`feedback.base.Annotator` backed by a causal LM reading (A)/(B) answer probabilities."""

    def __init__(
        self,
        model,
        tokenizer,
        constitution: Constitution | None = None,
        principles: tuple[str, ...] | None = None,
        clamp: tuple[float, float] | None = None,
        both_orders: bool = True,
        seed: int = 0,
        batch_size: int = 16,
        name: str = "judge",
    ):
        self.model, self.tokenizer = model, tokenizer
        self.constitution = constitution or load_constitution("default")
        self.principles = tuple(principles or self.constitution.judge.principles)
        if clamp is not None:
            lo, hi = clamp
            if not 0.0 <= lo <= 0.5 <= hi <= 1.0:
                raise ValueError(f"clamp must satisfy 0 <= lo <= 0.5 <= hi <= 1, got {clamp}")
            clamp = (float(lo), float(hi))
        self.clamp, self.both_orders, self.batch_size = clamp, both_orders, batch_size
        self.rng = random.Random(seed)
        self.name = name
        self.max_length = max_positions(model)
        model.eval()

    def judge_pairs(self, items: list[tuple[str, str, str]], skip_too_long: bool = False) -> list[PairVerdict | None]:
        """Verdicts for (prompt, a, b) triples, one sampled principle each, in one batched pass.

        Responses too long for the model's positions are shortened from their end, the same in
        both orders (`fit.fit_texts`; counted in `PairVerdict.truncated`). A prompt that does not
        fit even with empty responses raises `JudgeContextError`, or gives None with `skip_too_long`.
        """
        principles = [self.principles[self.rng.randrange(len(self.principles))] for _ in items]
        orders = 2 if self.both_orders else 1
        contexts, answers, truncated = [], [], []
        for (prompt, a, b), principle in zip(items, principles, strict=True):
            fitted = self._fit(principle, prompt, a, b, orders)
            truncated.append(None if fitted is None else fitted[1])
            if fitted is None:
                if not skip_too_long:
                    raise JudgeContextError(self.too_long_message(prompt))
                continue
            for ids, ans in fitted[0]:
                contexts.append(ids)
                answers.append(ans)
        if not contexts:
            return [None] * len(items)
        logits = next_token_logits(self.model, contexts, self.tokenizer.pad_token_id, self.batch_size)
        p_a = option_probability(torch.stack([lg[a] for lg, (a, _) in zip(logits, answers, strict=True)]),
                                 torch.stack([lg[b] for lg, (_, b) in zip(logits, answers, strict=True)]))  # (N * orders,)
        first = p_a[0::orders]  # P(A | a, b)
        swapped = p_a[1::2] if orders == 2 else None  # P(A | b, a)
        p = clamp_probability(order_average(first, swapped) if swapped is not None else first, self.clamp)
        out: list[PairVerdict | None] = []
        n = 0
        for cut, principle in zip(truncated, principles, strict=True):
            if cut is None:
                out.append(None)
                continue
            out.append(PairVerdict(float(p[n]), float(first[n]), None if swapped is None else float(swapped[n]),
                                   principle, cut))
            n += 1
        return out

    def _fit(self, principle: str, prompt: str, a: str, b: str, orders: int
             ) -> tuple[list[tuple[list[int], list[int]]], int] | None:
        """(context ids and answer ids per order, responses shortened), or None when even empty
        responses do not fit the model's positions."""
        built: dict[tuple[str, ...], list] = {}

        def build(texts) -> list[tuple[list[int], list[int]]]:
            key = tuple(texts)
            if key not in built:
                built[key] = [answer_token_ids(self.tokenizer, self.constitution.judge_prompt(principle, prompt, x, y))
                              for x, y in ((key[0], key[1]), (key[1], key[0]))[:orders]]
            return built[key]

        if not self.max_length:
            return build((a, b)), 0
        fitted = fit_texts(self.tokenizer, (a, b), lambda texts: max(len(ids) for ids, _ in build(texts)),
                           self.max_length)
        return None if fitted is None else (build(fitted.texts), fitted.truncated)

    def fixed_length(self, prompt: str) -> int:
        """Tokens of the longest principle's judge prompt for `prompt` with empty responses."""
        return max(len(answer_token_ids(self.tokenizer, self.constitution.judge_prompt(p, prompt, "", ""))[0])
                   for p in self.principles)

    def too_long_message(self, prompt: str) -> str:
        return (f"the judge prompt is {self.fixed_length(prompt)} tokens with empty responses (template, principle "
                f"and prompt), more than the judge model's {self.max_length} positions; use a judge model with a "
                "longer context or a shorter constitution (on the lab: model lab:assistant with constitution lab)")

    def rank_many(self, items: list[tuple[str, list[str] | tuple[str, ...]]], skip_too_long: bool = False
                  ) -> list[tuple[Judgement, list[PairVerdict]] | None]:
        """Judgements of many (prompt, responses) items, all their pairs in one batched pass.

        K = 2: ranking by p, `soft_label` = P(ranking[0] wins). K > 2: every pair is judged and
        response i scores its expected win rate mean_j p(i ≻ j); no soft label.
        """
        flat, owners = [], []
        for n, (prompt, responses) in enumerate(items):
            if len(responses) < 2:
                raise ValueError(f"a judgement needs at least 2 responses, got {len(responses)}")
            for i, j in itertools.combinations(range(len(responses)), 2):
                flat.append((prompt, responses[i], responses[j]))
                owners.append((n, i, j))
        verdicts = self.judge_pairs(flat, skip_too_long)
        mine: list[list[tuple[int, int, PairVerdict | None]]] = [[] for _ in items]
        for (n, i, j), v in zip(owners, verdicts, strict=True):
            mine[n].append((i, j, v))
        out: list[tuple[Judgement, list[PairVerdict]] | None] = []
        for (_, responses), pairs in zip(items, mine, strict=True):
            if any(v is None for _, _, v in pairs):
                out.append(None)
                continue
            k = len(responses)
            wins = [0.0] * k
            for i, j, v in pairs:
                wins[i] += v.p
                wins[j] += 1.0 - v.p
            scores = [w / (k - 1) for w in wins]
            ranking = sorted(range(k), key=lambda i: (-scores[i], i))  # stable: ties keep the shown order
            soft = None
            if k == 2:
                p = pairs[0][2].p
                soft = p if ranking[0] == 0 else 1.0 - p
            out.append((Judgement(ranking=ranking, scores=scores, soft_label=soft), [v for _, _, v in pairs]))
        return out

    def rank(self, prompt: str, responses: list[str] | tuple[str, ...]) -> Judgement:
        """`feedback.base.Annotator.rank`: see `rank_many`."""
        result = self.rank_many([(prompt, responses)])[0]
        assert result is not None  # without skip_too_long a prompt that cannot fit raises instead
        return result[0]


def max_positions(model) -> int | None:
    """The longest sequence a model's position embeddings allow (None when it does not say)."""
    cfg = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def build_judge(
    model: str = "lab",
    principles: str | None = None,
    constitution: str = "default",
    clamp: list[float] | tuple[float, float] | None = None,
    both_orders: bool = True,
    seed: int = 0,
    batch_size: int = 16,
    trust_remote_code: bool = False,
    dtype: str = "float32",
) -> AIJudge:
    """Registry factory (`annotator.name: judge`): options are plain YAML values.

    model: HF name or folder of the feedback model; on the lab use "lab:assistant" (the lab base
    model after learning the CAI formats) with constitution "lab";
    constitution: "default", "lab" or a YAML path (templates and default principles);
    principles: a .txt (one a line) or YAML file overriding the judge principles;
    clamp: [lo, hi] or null.
    """
    from rlhfkit.config import ModelConfig
    from rlhfkit.models.loading import load_policy, load_tokenizer

    cfg = ModelConfig(name_or_path=model, trust_remote_code=trust_remote_code, dtype=dtype)
    c = load_constitution(constitution)
    chosen = load_judge_principles(principles) if principles else c.judge.principles
    return AIJudge(load_policy(cfg), load_tokenizer(cfg), c, chosen, tuple(clamp) if clamp else None,
                   both_orders, seed, batch_size, name=f"judge:{model}")
