"""Records to token ids: the one place that decides BOS, EOS, chat templates and padding.

The rules, so every recipe agrees:

- A prompt starts with BOS exactly when the tokenizer puts BOS on plain text (Llama
  yes, GPT-2 no), whether it came as a string or through the chat template, and never
  twice (a template that writes ``{{ bos_token }}`` is not given a second one). A plain
  prompt never ends with EOS, even if the tokenizer is set to append one.
- A response is tokenised on its own, without special tokens, and ends with exactly
  one EOS. Separate tokenisation matches generation, where the policy samples response
  tokens after the prompt ids, so SFT, reward and PPO all see the same split.
- Labels are -100 on prompt tokens and padding (``IGNORE_INDEX``, what HF and
  ``F.cross_entropy`` skip), so the loss only counts response tokens.
- Padding is right for training and left for generation; the attention mask comes from
  sequence lengths, never from comparing ids to the pad id (pad often equals EOS).
- A response after a conversational prompt is the chat template's rendering of the assistant
  turn after the generation prompt (`encode_response_after`), in SFT, DPO and reward models
  alike, so every recipe sees the tokens the policy produces at generation time.
- Given a ``max_length`` in tokens, a text is cut to ``CHARS_PER_TOKEN * max_length``
  characters *before* tokenising (a prompt keeps its end, a response its start): a 50 MB
  record would otherwise be tokenised whole (gigabytes) only to keep a few hundred tokens.

Why one file (~430 lines): these rules hold only because every encoder (prompt, response,
conversation turn, held-out text, prompt + responses, batches) lives here and shares the BOS, EOS
and truncation helpers; split apart, two encoders would drift.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from rlhfkit.data.records import (
    Comparison,
    DataError,
    Demonstration,
    Feedback,
    Message,
    PromptRecord,
)

IGNORE_INDEX = -100

Side = Literal["left", "right"]

CHARS_PER_TOKEN = 64
"""Characters tokenised per token of ``max_length``; longer texts are cut first.

Why 64: BPE vocabularies average about 4 characters a token on prose and fewer on code or
non-Latin scripts; single tokens can be long (runs of spaces or dashes), but a window of
thousands of characters only averages over 64 a token if it is one repeated symbol run or one
unknown "word". So the cut never changes the tokens that are kept on real text (tested: the
kept ids equal those of tokenising the whole text), while the work stays bounded: 64 * 4096 =
256 K characters at most for a 4096-token window, whatever the record's size.
"""


def char_budget(max_length: int) -> int:
    """Characters of a text tokenised for a ``max_length``-token window (`CHARS_PER_TOKEN`)."""
    return CHARS_PER_TOKEN * max_length


# ---- prompts -------------------------------------------------------------------------


def encode_prompt(
    tokenizer: Any,
    record_or_prompt: str | PromptRecord | Demonstration | Comparison | Sequence[Message | Mapping],
    *,
    max_length: int | None = None,
) -> list[int]:
    """Prompt token ids, ready for the response to follow.

    A plain prompt (a string, or a record without messages) is tokenised with the
    tokenizer's special tokens, so BOS is added where the model expects it. A
    conversation (a record with messages, or a list of messages) is rendered by the
    chat template with the generation prompt (the assistant header) appended.

    With ``max_length``, at most that many ids: the prompt's last tokens, after its BOS.
    The text is cut to its last `char_budget` characters before tokenising (for a
    conversation: each turn's content, and whole turns before the last user turn that
    starts that far from the end, a leading system turn kept).
    """
    messages = _prompt_messages(record_or_prompt)
    if messages is None:
        text = record_or_prompt if isinstance(record_or_prompt, str) else record_or_prompt.prompt
        if max_length is not None:
            text = text[-char_budget(max_length) :]
        ids = _one_leading_bos(
            tokenizer, list(tokenizer(text, add_special_tokens=True)["input_ids"])
        )
        # Tokenizers set to append EOS (Llama add_eos_token=True) would end the prompt
        # with "stop", so sampling ends at once and SFT learns answers after an EOS.
        eos = tokenizer.eos_token_id
        while eos is not None and len(ids) > 1 and ids[-1] == eos:
            ids.pop()
    else:
        if max_length is not None:
            messages = _clip_conversation(messages, char_budget(max_length))
        ids = _chat_ids(tokenizer, messages, add_generation_prompt=True)
    return ids if max_length is None else _keep_end(ids, max_length, tokenizer.bos_token_id)


def _prompt_messages(x: Any) -> tuple[Message, ...] | None:
    if isinstance(x, str):
        return None
    if isinstance(x, PromptRecord | Demonstration | Comparison | Feedback):
        return x.prompt_messages
    if isinstance(x, Sequence):
        return tuple(Message.from_json(m) for m in x)
    raise TypeError(f"expected a prompt string, a record or a list of messages, got {type(x)}")


def _clip_conversation(messages: Sequence[Message], budget: int) -> list[dict[str, str]]:
    """The conversation's end, about ``budget`` characters or more, as role/content dicts.

    Turns are dropped from the front only before a user turn that starts at least ``budget``
    characters from the end (so the rest still alternates as templates expect; a leading
    system turn stays); each kept content keeps its last ``budget`` characters. Dicts, not
    `Message`: a cut content may be only whitespace, which a Message refuses.
    """
    head = list(messages[:1]) if messages[0].role == "system" else []
    body = list(messages[len(head) :])
    start, tail = 0, 0
    for i in range(len(body) - 1, -1, -1):
        tail += len(body[i].content)
        if tail >= budget and body[i].role == "user":
            start = i
            break
    return [{"role": m.role, "content": m.content[-budget:]} for m in head + body[start:]]


def _chat_ids(
    tokenizer: Any, messages: Sequence[Message | Mapping], add_generation_prompt: bool
) -> list[int]:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "the tokenizer has no chat template, so conversational records (messages) cannot "
            "be tokenised; set model.chat_template (a Jinja string or a file, e.g. --set "
            "model.chat_template=template.jinja) or use plain {'prompt': ...} records"
        )
    ids = tokenizer.apply_chat_template(
        [m.to_json() if isinstance(m, Message) else dict(m) for m in messages],
        add_generation_prompt=add_generation_prompt,
        tokenize=True,
        return_dict=False,
    )
    ids = _one_leading_bos(tokenizer, list(ids))
    # The template decides the layout; BOS follows the tokenizer's plain-text rule so a
    # conversational prompt starts the way every pretraining document did.
    bos = tokenizer.bos_token_id
    if _adds_bos(tokenizer) and ids[:1] != [bos]:
        ids = [bos] + ids
    return ids


def _adds_bos(tokenizer: Any) -> bool:
    """Whether tokenizing plain text with special tokens puts BOS first."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return with_special[:1] == [bos] and without[:1] != [bos]


def _keep_end(ids: list[int], keep: int, bos: int | None) -> list[int]:
    """The last ``keep`` ids of a prompt; a leading BOS stays first (when ``keep`` >= 2)."""
    if keep >= len(ids):
        return ids
    if bos is not None and ids[:1] == [bos] and keep >= 2:
        return [bos] + ids[len(ids) - (keep - 1) :]
    return ids[len(ids) - keep :]


def _one_leading_bos(tokenizer: Any, ids: list[int]) -> list[int]:
    """Drop repeated leading BOS (text or template starting with the BOS string)."""
    bos = tokenizer.bos_token_id
    start = 0
    while bos is not None and start + 1 < len(ids) and ids[start] == bos and ids[start + 1] == bos:
        start += 1
    return ids[start:]


# ---- responses -----------------------------------------------------------------------


def encode_response_after(
    tokenizer: Any,
    prompt: str | PromptRecord | Demonstration | Comparison | Sequence[Message | Mapping],
    response: str,
    *,
    max_length: int | None = None,
) -> list[int]:
    """The ids of ``response`` as it follows ``prompt`` (a record, a string or messages).

    The one way every recipe tokenises a response. After a plain prompt: `encode_response`
    (the text's tokens, exactly one EOS). After a conversation: the chat template's
    rendering of the assistant turn after the generation prompt, as SFT trains it (the
    template's end-of-turn marker included, EOS appended if the template has none). An
    empty response is just EOS, what a policy that stops at once produces.

    With ``max_length``, at most that many ids, from a text cut to its first
    `char_budget` characters. A cut plain response gets no EOS (it did not end there); a cut
    assistant turn is rendered whole, and on real text its end-of-turn falls beyond
    ``max_length`` tokens (`CHARS_PER_TOKEN`).
    """
    budget = None if max_length is None else char_budget(max_length)
    clipped = budget is not None and len(response) > budget
    messages = _prompt_messages(prompt)
    if clipped:
        response = response[:budget]
    if messages is None:
        ids = encode_response(tokenizer, response) if not clipped else _plain_ids(tokenizer, response)
    else:
        content = response if clipped else _strip_eos_text(tokenizer, response)
        if not content.strip():
            ids = [_eos_id(tokenizer)]
        else:
            if budget is not None:
                messages = _clip_conversation(messages, budget)
            ids = _assistant_turn(tokenizer, messages, content)
    return ids if max_length is None else ids[:max_length]


def _plain_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_response(tokenizer: Any, response: str) -> list[int]:
    """Response ids without special tokens, then exactly one EOS (after a plain prompt).

    A response that already ends with the EOS string (common in scraped or generated
    data) has it stripped first, so the model never learns to emit EOS twice. For a
    record's response use `encode_response_after`, which also handles conversations.
    """
    eos_id = _eos_id(tokenizer)
    ids = _plain_ids(tokenizer, _strip_eos_text(tokenizer, response))
    while ids and ids[-1] == eos_id:
        ids.pop()
    return ids + [eos_id]


def _eos_id(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise DataError(
            "the tokenizer has no eos_token, so responses cannot be terminated; use a "
            "tokenizer that defines one ('eos_token' in its tokenizer_config.json)"
        )
    return tokenizer.eos_token_id


def _strip_eos_text(tokenizer: Any, text: str) -> str:
    eos = tokenizer.eos_token
    while eos and text.rstrip().endswith(eos):
        text = text.rstrip()[: -len(eos)]
    return text


# ---- held-out text ---------------------------------------------------------------------


def encode_text(tokenizer: Any, text: str, max_length: int) -> list[int]:
    """A text record's ids for language modelling: the tokenizer's special tokens (BOS where
    it adds one), every token, then EOS; at most ``max_length``. The text is cut to its first
    `char_budget` characters before tokenising; a cut text gets no EOS."""
    budget = char_budget(max_length)
    ids = list(tokenizer(text[:budget], add_special_tokens=True)["input_ids"])
    if len(text) <= budget:
        ids.append(_eos_id(tokenizer))
    return ids[:max_length]


# ---- prompt + responses, truncated together ------------------------------------------


def encode_prompt_responses(
    tokenizer: Any,
    prompt: str | PromptRecord | Demonstration | Comparison | Sequence[Message | Mapping],
    responses: Sequence[str],
    max_length: int,
    *,
    min_prompt_tokens: int = 8,
) -> tuple[list[int], list[list[int]], bool]:
    """``(prompt ids, [ids of each response after it], truncated)``, each prompt + response
    at most ``max_length`` tokens: SFT's demonstration, DPO's pair, a reward model's row.

    The responses share one prompt (`encode_prompt`, `encode_response_after`). When the
    prompt and the longest response do not fit, the prompt loses tokens from the left first
    (keeping BOS and at least ``min_prompt_tokens``), then every response is cut from the
    right, which drops its EOS; ``truncated`` says so, for callers to count.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    prompt_ids = encode_prompt(tokenizer, prompt, max_length=max_length)
    response_ids = [encode_response_after(tokenizer, prompt, r, max_length=max_length) for r in responses]
    # A text cut before tokenising is truncated even if, being odd, it fits in tokens.
    cut = _prompt_chars(prompt) > char_budget(max_length) or any(
        len(r) > char_budget(max_length) for r in responses
    )
    longest = max((len(r) for r in response_ids), default=0)
    if len(prompt_ids) + longest <= max_length:
        return prompt_ids, response_ids, cut
    # Keep the prompt's end (closest to the answer) and at least one response token.
    keep = min(len(prompt_ids), max(min_prompt_tokens, max_length - longest), max_length - 1)
    prompt_ids = _keep_end(prompt_ids, keep, tokenizer.bos_token_id)
    return prompt_ids, [r[: max_length - len(prompt_ids)] for r in response_ids], True


def _prompt_chars(prompt: Any) -> int:
    messages = _prompt_messages(prompt)
    if messages is None:
        return len(prompt if isinstance(prompt, str) else prompt.prompt)
    return sum(len(m.content) for m in messages)


def encode_demonstration(
    tokenizer: Any, record: Demonstration, max_length: int, *, min_prompt_tokens: int = 8
) -> dict[str, Any]:
    """``{"input_ids", "labels", "truncated"}`` for one demonstration (SFT example).

    ``labels`` equal ``input_ids`` on the response (EOS included) and are -100 on the
    prompt. A conversation's prompt is every turn but the last, rendered with the
    generation prompt, and its response the template's final assistant turn (see
    `encode_response_after`). Truncation as in `encode_prompt_responses`.
    """
    prompt_ids, (response_ids,), truncated = encode_prompt_responses(
        tokenizer, record, (record.response,), max_length, min_prompt_tokens=min_prompt_tokens
    )
    return {
        "input_ids": prompt_ids + response_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
        "truncated": truncated,
    }


def _assistant_turn(
    tokenizer: Any, prompt_messages: Sequence[Message | Mapping], content: str
) -> list[int]:
    """The ids of the assistant's ``content`` after ``prompt_messages``, as the template renders it.

    The conversation is rendered in one go, and the prompt part, what `encode_prompt` gives
    at generation time (the turns plus the generation prompt), is removed from its front. It
    must be a prefix of the full rendering, or the template rewrites history (e.g. drops
    earlier reasoning) and the answer cannot be located.
    """
    eos_id = _eos_id(tokenizer)
    prefix = _chat_ids(tokenizer, prompt_messages, add_generation_prompt=True)
    full = _chat_ids(
        tokenizer,
        [*prompt_messages, {"role": "assistant", "content": content}],
        add_generation_prompt=False,
    )
    if full[: len(prefix)] != prefix:
        at = next(
            (i for i, (a, b) in enumerate(zip(prefix, full, strict=False)) if a != b), len(full)
        )
        raise DataError(
            "the chat template is not prefix-consistent: rendering the conversation without "
            "its last assistant turn (with add_generation_prompt=True) is not a prefix of "
            f"the full rendering (they differ at token {at}), so the response tokens cannot "
            "be located; use a template that renders earlier turns the same way in both",
            field="messages",
        )
    response = full[len(prefix) :]
    if not response:
        raise DataError(
            "the chat template rendered the assistant turn as nothing", field="messages"
        )
    if eos_id not in response:
        # Templates that end turns with their own marker still need the model to stop.
        response.append(eos_id)
    return response


# ---- batching ------------------------------------------------------------------------


def pad_batch(sequences: Sequence[Sequence[int]], pad_value: int, side: Side) -> torch.Tensor:
    """(B, T) LongTensor, T = longest sequence, padded on ``side``.

    ``side`` has no default on purpose: right for training (positions line up with the
    labels), left for generation (every row's last token is real, so new tokens append).
    """
    _check_side(side)
    if not sequences:
        raise ValueError("cannot pad an empty batch")
    width = max(len(s) for s in sequences)
    out = torch.full((len(sequences), width), pad_value, dtype=torch.long)
    for i, seq in enumerate(sequences):
        if len(seq):
            row = torch.as_tensor(list(seq), dtype=torch.long)
            if side == "right":
                out[i, : len(seq)] = row
            else:
                out[i, width - len(seq) :] = row
    return out


def attention_mask(sequences: Sequence[Sequence[int]], side: Side) -> torch.Tensor:
    """(B, T) LongTensor, 1 on real tokens, 0 on padding, matching `pad_batch`.

    Built from lengths, not from ``ids != pad_id``: pad is often EOS, and a real
    trailing EOS must stay visible.
    """
    _check_side(side)
    if not sequences:
        raise ValueError("cannot build a mask for an empty batch")
    lengths = torch.tensor([len(s) for s in sequences])
    positions = torch.arange(int(lengths.max()))
    if side == "right":
        return (positions[None, :] < lengths[:, None]).long()
    return (positions[None, :] >= (lengths.max() - lengths)[:, None]).long()


def _check_side(side: str) -> None:
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")


def collate_demonstrations(
    features: Sequence[Mapping[str, Any]], pad_token_id: int | None
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (padded with -100), one
    example a row (several examples to a row, kept apart: `models.packing.pack_rows`)."""
    if pad_token_id is None:
        raise DataError(
            "the tokenizer has no pad token; set tokenizer.pad_token (reusing eos is fine: "
            "padding is marked by the attention mask and -100 labels, not by the id)"
        )
    ids = [f["input_ids"] for f in features]
    labels = [f["labels"] for f in features]
    for i, (a, b) in enumerate(zip(ids, labels, strict=True)):
        if len(a) != len(b):
            raise ValueError(f"feature {i}: {len(a)} input_ids but {len(b)} labels")
    return {
        "input_ids": pad_batch(ids, pad_token_id, "right"),
        "attention_mask": attention_mask(ids, "right"),
        "labels": pad_batch(labels, IGNORE_INDEX, "right"),
    }
