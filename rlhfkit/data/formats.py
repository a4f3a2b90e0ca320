"""The dataset layouts users bring, mapped onto rlhfkit's canonical record dicts.

`read_records` passes every row through `canonical(obj, kind)` before the record's
``from_json``, so one file may mix layouts. The rules, by field shape (README data table):

Comparisons with ``chosen`` and ``rejected``:

- Strings with a string ``prompt`` (or ``messages``): already canonical.
- Strings and no prompt, Anthropic HH (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``): the
  shared prompt is the longest common prefix of the two texts (TRL ``extract_prompt``), cut
  back to the end of the last ``"\\n\\nAssistant:"`` marker inside it, so a response never
  starts mid-answer when the two answers share their first words. The responses are the
  remainders (each keeps its leading space, as TRL does). A shared prefix with no such
  marker fits no layout: an error naming the accepted forms.
- Message lists (TRL's conversational preference). Each side becomes a whole conversation:
  an explicit ``prompt`` list (or ``messages``) followed by the side's messages, unless the
  side already starts with those messages (they are not duplicated). Without a prompt list,
  the side is the whole conversation (TRL's implicit prompt); a side that is only the
  assistant turn after a string ``prompt`` gets that prompt as its user turn. Every
  conversation must end with the assistant's response; the prompt is all turns before it,
  which must be the same on both sides: that is TRL's common message prefix, required to
  be everything but the last turn, since a response here is one assistant message.
  UltraFeedback-binarized (string ``prompt``, ``chosen = [user, assistant]``) is this
  case: the user turn is the prompt conversation, the string stays its text view.
- A string ``prompt`` beside message lists stays the record's text view (``prompt``).

Demonstrations with ``prompt`` and ``completion`` (TRL's prompt-completion): two strings are
``{"prompt", "response"}``; otherwise the prompt (a list, or a string read as one user turn)
and the completion (one assistant message, or a string) form ``messages``. Prompt records
with a ``prompt`` list read it as ``messages``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rlhfkit.data.records import (
    Comparison,
    DataError,
    Message,
    check_prompt_conversation,
    json_type,
    parse_messages,
    without_nulls,
)

HH_ASSISTANT = "\n\nAssistant:"

Conversation = tuple[Message, ...]


def canonical(obj: Mapping, kind: str) -> Mapping:
    """``obj`` in the canonical shape of ``kind`` (unchanged when it already is one)."""
    if kind == "comparison":
        return _comparison(without_nulls(obj))
    if kind == "demonstration":
        return _demonstration(without_nulls(obj))
    if kind == "prompt":
        return _prompt_record(without_nulls(obj))
    return obj


# ---- prompts ---------------------------------------------------------------------------


def _prompt_record(obj: dict) -> dict:
    if _is_list(obj.get("prompt")) and "messages" not in obj:
        obj["messages"] = obj.pop("prompt")
    return obj


# ---- comparisons -----------------------------------------------------------------------


def _comparison(obj: dict) -> dict:
    if _is_list(obj.get("prompt")) and "messages" not in obj:
        obj["messages"] = obj.pop("prompt")  # TRL's conversational prompt is our `messages`
    if "chosen" not in obj or "rejected" not in obj or "responses" in obj:
        return obj  # canonical, or incomplete: from_json names what is missing
    chosen, rejected = obj["chosen"], obj["rejected"]
    if _is_list(chosen) or _is_list(rejected):
        return _conversational_pair(obj)
    if "prompt" in obj or "messages" in obj or not (isinstance(chosen, str) and isinstance(rejected, str)):
        return obj
    prompt, chosen, rejected = split_implicit_prompt(chosen, rejected)
    return obj | {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def split_implicit_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen response, rejected response) of two Anthropic HH transcripts.

    The prompt is their common prefix cut back to the end of its last ``"\\n\\nAssistant:"``.
    """
    common = _common_prefix_length(chosen, rejected)
    cut = chosen.rfind(HH_ASSISTANT, 0, common)  # the whole marker inside the common prefix
    if cut < 0:
        raise DataError(
            "missing, and 'chosen' and 'rejected' share no Anthropic HH "
            f"'\\n\\nAssistant:' turn to take it from; {Comparison.expected}",
            field="prompt",
        )
    end = cut + len(HH_ASSISTANT)
    return chosen[:end], chosen[end:], rejected[end:]


def _common_prefix_length(a: str, b: str, block: int = 4096) -> int:
    """Length of the longest common prefix, compared block by block (fast on MB strings)."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i : i + block] == b[i : i + block]:
        i += block
    i = min(i, n)
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _conversational_pair(obj: dict) -> dict:
    """Canonical ``{"messages", "chosen", "rejected"}`` (+ ``prompt`` text) from message lists."""
    given = parse_messages(obj["messages"]) if "messages" in obj else None
    text = obj.get("prompt")
    if text is not None and not isinstance(text, str):
        raise DataError(f"expected a string or a list of messages, got {json_type(text)}", field="prompt")
    contexts, contents = {}, {}
    for field in ("chosen", "rejected"):
        contexts[field], contents[field] = _context_and_response(obj[field], field, given, text)
    if contexts["chosen"] != contexts["rejected"]:
        c, r = contexts["chosen"], contexts["rejected"]
        at = next((i for i, (x, y) in enumerate(zip(c, r, strict=False)) if x != y), min(len(c), len(r)))
        raise DataError(
            f"differs from 'chosen' at message {at}, before the last turn; the two must be the "
            "same conversation up to the final assistant message (the response)",
            field="rejected",
        )
    out = {k: v for k, v in obj.items() if k not in ("chosen", "rejected", "messages")}
    return out | {"messages": contexts["chosen"], "chosen": contents["chosen"], "rejected": contents["rejected"]}


def _context_and_response(
    value: Any, field: str, given: Conversation | None, text: str | None
) -> tuple[Conversation, str]:
    """(prompt conversation, response content) of one side of a conversational comparison."""
    if isinstance(value, str):
        messages: Conversation = (Message("assistant", value),)
    else:
        messages = parse_messages(value, field)
    if given is not None and messages[: len(given)] == given:
        messages = messages[len(given) :]  # the side repeats the prompt: do not duplicate it
    if not messages or messages[-1].role != "assistant":
        raise DataError(
            "must end with the assistant's response (a message with role 'assistant')", field=field
        )
    context = messages[:-1]
    if given is not None:
        if context:
            raise DataError(
                f"has {len(messages)} messages after the prompt; expected one assistant message "
                "(the response)",
                field=field,
            )
        context = given
    elif not context:
        if text is None:
            raise DataError(
                "is only the assistant's response and there is no 'prompt' to answer", field=field
            )
        context = (Message("user", text),)
    check_prompt_conversation(context, field)
    return context, messages[-1].content


# ---- demonstrations --------------------------------------------------------------------


def _demonstration(obj: dict) -> dict:
    if "completion" not in obj or "response" in obj or "messages" in obj:
        return obj
    prompt, completion = obj.pop("prompt", None), obj.pop("completion")
    if prompt is None:
        raise DataError("missing; a prompt-completion record needs 'prompt'", field="prompt")
    if isinstance(prompt, str) and isinstance(completion, str):
        return obj | {"prompt": prompt, "response": completion}
    if isinstance(prompt, str):
        context: Conversation = (Message("user", prompt),)
        obj["prompt"] = prompt  # the text view, as the user wrote it
    else:
        context = parse_messages(prompt, "prompt")
    check_prompt_conversation(context, "prompt")
    _, response = _context_and_response(completion, "completion", context, None)
    return obj | {"messages": (*context, Message("assistant", response))}


def _is_list(value: Any) -> bool:
    return isinstance(value, list | tuple)
