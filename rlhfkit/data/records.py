"""Record types: the validated shapes every dataset is turned into before training.

Each record is a frozen dataclass that checks itself in ``__post_init__``, so a record
that exists is a record that is valid: recipes never re-check, and a bad line fails the
run at read time with a message naming the field, not 40 minutes into training with a
shape error. ``from_json`` parses the canonical dict shape (the "Contracts" of the design
sketch); ``to_json`` writes it back. The layouts other toolkits use (Anthropic HH, TRL's
conversational preference and prompt-completion forms, UltraFeedback-binarized) are mapped
onto it by `data.formats.canonical`, which `read_records` applies to every row. Numbers
must be finite: NaN or infinity in ``soft_label`` or ``scores`` is an error.

Conversational records keep the conversation in ``messages`` (a tuple of `Message`) and
a plain-text view of it in ``prompt``, so judges, logs and reports can always show a
string while tokenisation goes through the chat template.

Why one file (~700 lines): it is the record contract in one place. Every type shares `DataError` and
the field validators above them, and a reader wants the six shapes side by side; reading files
(`data.readers`, `data.jsonl`) and mapping other toolkits' layouts (`data.formats`) live apart.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from rlhfkit.errors import UserError

ROLES = ("system", "user", "assistant")


class DataError(UserError):
    """A data problem, located as precisely as we know: ``source:line: field 'x': why``.

    One class for every data failure so callers catch one thing. Records raise it with
    only ``field`` set; readers add ``source`` and ``line`` (1-based JSONL line) or
    ``row`` (0-based index into a ``datasets.Dataset``) with `at`.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        row: int | None = None,
        field: str | None = None,
    ):
        self.message = message
        self.source = source
        self.line = line
        self.row = row
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.source or ""
        if self.line is not None:
            where += f":{self.line}"
        elif self.row is not None:
            where += f":row {self.row}"
        parts = [where] if where else []
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        parts.append(self.message)
        return ": ".join(parts)

    def __reduce__(self):
        # Keyword-only __init__ args break default exception pickling (DataLoader workers).
        return (_rebuild_error, (self.message, self.source, self.line, self.row, self.field))

    def at(self, source: str, *, line: int | None = None, row: int | None = None) -> DataError:
        """The same error, located in ``source`` at a JSONL ``line`` or dataset ``row``."""
        return DataError(self.message, source=source, line=line, row=row, field=self.field)

    def inside(self, prefix: str) -> DataError:
        """The same error with its field nested under ``prefix`` (``messages[2]`` + ``role``)."""
        field = prefix if self.field is None else f"{prefix}.{self.field}"
        return DataError(
            self.message, source=self.source, line=self.line, row=self.row, field=field
        )


def _rebuild_error(message, source, line, row, field) -> DataError:
    return DataError(message, source=source, line=line, row=row, field=field)


# ---- small validators: each names the field it checks -------------------------------


def json_type(value: Any) -> str:
    """The JSON name of a value's type, so error messages speak the file's language."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, Sequence):
        return "list"
    return type(value).__name__


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {json_type(value)} {value!r:.60}", field=field)
    if not value.strip():
        raise DataError("is empty (or only whitespace)", field=field)
    return value


def _list(value: Any, field: str) -> Sequence:
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise DataError(f"expected a list, got {json_type(value)} {value!r:.60}", field=field)
    return value


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(f"expected a number, got {json_type(value)} {value!r:.60}", field=field)
    # Python's json reads NaN and Infinity, and pandas writes NaN for missing floats; either
    # would turn a loss or a margin into NaN silently, many steps later.
    if not math.isfinite(value):
        raise DataError(f"is {value}, not a finite number", field=field)
    return float(value)


def _ranking(value: Any, n_responses: int) -> tuple[int, ...]:
    items = _list(value, "ranking")
    for i, r in enumerate(items):
        if isinstance(r, bool) or not isinstance(r, int):
            raise DataError(
                f"expected response indices (integers), got {json_type(r)} {r!r} at position {i}",
                field="ranking",
            )
    ranking = tuple(items)
    if sorted(ranking) != list(range(n_responses)):
        raise DataError(
            f"{list(ranking)} is not a permutation of 0..{n_responses - 1} "
            f"(one index per response, best first)",
            field="ranking",
        )
    return ranking


@dataclass(frozen=True)
class Message:
    """One chat turn, ``{"role": "system"|"user"|"assistant", "content": str}``."""

    role: str
    content: str

    def __post_init__(self):
        if self.role not in ROLES:
            raise DataError(f"{self.role!r} is not one of {', '.join(ROLES)}", field="role")
        _text(self.content, "content")

    @classmethod
    def from_json(cls, obj: Any) -> Message:
        if isinstance(obj, Message):
            return obj
        if not isinstance(obj, Mapping):
            raise DataError(f"expected an object with 'role' and 'content', got {json_type(obj)}")
        for key in ("role", "content"):
            if obj.get(key) is None:
                raise DataError("missing (a message needs 'role' and 'content')", field=key)
        return cls(role=obj["role"], content=obj["content"])

    def to_json(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


def parse_messages(value: Any, field: str = "messages") -> tuple[Message, ...]:
    """Parse and validate a conversation; extra keys on a message are ignored."""
    items = _list(value, field)
    if not items:
        raise DataError("is an empty conversation", field=field)
    messages = []
    for i, item in enumerate(items):
        try:
            messages.append(Message.from_json(item))
        except DataError as e:
            raise e.inside(f"{field}[{i}]") from None
    return tuple(messages)


def check_prompt_conversation(messages: tuple[Message, ...], field: str = "messages") -> None:
    """A prompt conversation is answered next, so it must not end on the assistant."""
    if messages[-1].role == "assistant":
        raise DataError(
            "a prompt conversation must end with a user (or system) turn, not 'assistant'",
            field=field,
        )


def _demonstration_conversation(messages: tuple[Message, ...]) -> None:
    """A demonstration is a prompt conversation followed by the assistant's answer."""
    if len(messages) < 2 or messages[-1].role != "assistant":
        raise DataError(
            "a demonstration conversation needs earlier turns and must end with "
            "the assistant's response",
            field="messages",
        )
    check_prompt_conversation(messages[:-1])


def conversation_text(messages: Sequence[Message]) -> str:
    """A plain-text view of a conversation for judges and logs (never tokenised).

    A single user turn is shown as its content, so ``{"messages": [user]}`` and
    ``{"prompt": content}`` read the same to a judge.
    """
    if len(messages) == 1 and messages[0].role == "user":
        return messages[0].content
    return "\n\n".join(f"{m.role}: {m.content}" for m in messages)


def without_nulls(obj: Mapping) -> dict:
    """Null means absent: HF datasets fill missing columns with None."""
    return {k: v for k, v in obj.items() if v is not None}


def _missing(field: str, expected: str) -> DataError:
    return DataError(f"missing; {expected}", field=field)


# ---- the records ---------------------------------------------------------------------


@dataclass(frozen=True)
class TextRecord:
    """Held-out text for perplexity: ``{"text": str}``."""

    text: str

    kind: ClassVar[str] = "text"
    expected: ClassVar[str] = "a text record needs 'text' (a string)"

    def __post_init__(self):
        _text(self.text, "text")

    @classmethod
    def from_json(cls, obj: Mapping) -> TextRecord:
        obj = without_nulls(obj)
        if "text" not in obj:
            raise _missing("text", cls.expected)
        return cls(text=obj["text"])

    def to_json(self) -> dict:
        return {"text": self.text}


@dataclass(frozen=True)
class PromptRecord:
    """A prompt to sample from: ``{"prompt": str}`` or ``{"messages": [...]}``.

    For a conversation the prompt *is* the messages; the chat template adds the
    assistant header (generation prompt) at tokenisation time.
    """

    prompt: str
    messages: tuple[Message, ...] | None = None
    # The record's other fields (e.g. a verifiable task's `answer` or `tests`), passed by name to a
    # `module:function` reward; not compared or hashed.
    columns: Mapping[str, Any] | None = dataclasses.field(default=None, compare=False, hash=False)

    kind: ClassVar[str] = "prompt"
    expected: ClassVar[str] = (
        "a prompt record needs 'prompt' (a string, or a list of {role, content} messages) "
        "or 'messages' (a list of {role, content})"
    )

    def __post_init__(self):
        _text(self.prompt, "prompt")
        if self.messages is not None:
            # Normalise lists of dicts to a tuple of Message so the frozen record is hashable.
            object.__setattr__(self, "messages", parse_messages(self.messages))
            check_prompt_conversation(self.messages)

    @property
    def prompt_messages(self) -> tuple[Message, ...] | None:
        """The conversation to render with a generation prompt, or None for plain text."""
        return self.messages

    @classmethod
    def from_json(cls, obj: Mapping) -> PromptRecord:
        obj = without_nulls(obj)
        columns = {k: v for k, v in obj.items() if k not in ("prompt", "messages")} or None
        if "messages" in obj:
            messages = parse_messages(obj["messages"])
            check_prompt_conversation(messages)
            return cls(prompt=obj.get("prompt", conversation_text(messages)), messages=messages, columns=columns)
        if "prompt" not in obj:
            raise _missing("prompt", cls.expected)
        return cls(prompt=obj["prompt"], columns=columns)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"prompt": self.prompt}
        if self.messages is not None:
            out["messages"] = [m.to_json() for m in self.messages]
        return out | dict(self.columns or {})


@dataclass(frozen=True)
class Demonstration:
    """A prompt and the response to imitate (SFT).

    ``{"prompt", "response"}``, or ``{"messages": [...]}`` whose last message is the
    assistant's response; then ``messages`` holds the *whole* conversation (the chat
    template renders it in one go) and ``prompt`` is the text view of the earlier turns.
    """

    prompt: str
    response: str
    messages: tuple[Message, ...] | None = None

    kind: ClassVar[str] = "demonstration"
    expected: ClassVar[str] = (
        "a demonstration needs 'prompt' and 'response' (strings), 'messages' ending with "
        "the assistant's response, or 'prompt' and 'completion' (strings or message lists)"
    )

    def __post_init__(self):
        _text(self.prompt, "prompt")
        _text(self.response, "response")
        if self.messages is not None:
            messages = parse_messages(self.messages)
            object.__setattr__(self, "messages", messages)
            _demonstration_conversation(messages)
            if messages[-1].content != self.response:
                raise DataError(
                    "differs from the content of the last (assistant) message", field="response"
                )

    @property
    def prompt_messages(self) -> tuple[Message, ...] | None:
        """The conversation before the response, or None for plain text."""
        return None if self.messages is None else self.messages[:-1]

    @classmethod
    def from_messages(cls, messages: Sequence[Message | Mapping]) -> Demonstration:
        """Build from a conversation whose last message is the assistant's response."""
        parsed = parse_messages(messages)
        _demonstration_conversation(parsed)
        return cls(
            prompt=conversation_text(parsed[:-1]),
            response=parsed[-1].content,
            messages=parsed,
        )

    @classmethod
    def from_json(cls, obj: Mapping) -> Demonstration:
        obj = without_nulls(obj)
        if "messages" in obj:
            record = cls.from_messages(obj["messages"])
            if "prompt" in obj:
                record = cls(obj["prompt"], record.response, record.messages)
            return record
        for field in ("prompt", "response"):
            if field not in obj:
                raise _missing(field, cls.expected)
        return cls(prompt=obj["prompt"], response=obj["response"])

    def to_json(self) -> dict:
        if self.messages is not None:
            return {"prompt": self.prompt, "messages": [m.to_json() for m in self.messages]}
        return {"prompt": self.prompt, "response": self.response}


@dataclass(frozen=True)
class Comparison:
    """K responses to one prompt, ranked best first (reward modelling, DPO).

    ``ranking`` lists response indices best first, so ``responses[ranking[0]]`` won.
    Pairwise ``{"chosen", "rejected"}`` is read as ``responses=(chosen, rejected)``,
    ``ranking=(0, 1)``. ``soft_label`` (K=2 only) is the probability that
    ``responses[ranking[0]]`` beats ``responses[ranking[1]]``, for label-smoothed or
    judge-probability targets. Ties are not representable: drop them before writing.
    """

    prompt: str
    responses: tuple[str, ...]
    ranking: tuple[int, ...]
    soft_label: float | None = None
    scores: tuple[float, ...] | None = None
    annotator: str | None = None
    messages: tuple[Message, ...] | None = None

    kind: ClassVar[str] = "comparison"
    expected: ClassVar[str] = (
        "a comparison needs 'prompt' (a string or messages; or 'messages') with either "
        "'responses' and 'ranking' (indices best first) or 'chosen' and 'rejected' (strings or "
        "assistant messages); or, with no prompt, 'chosen' and 'rejected' as two whole "
        "conversations (message lists differing only in the last assistant turn) or two "
        "Anthropic HH transcripts ('\\n\\nHuman: ...\\n\\nAssistant: ...')"
    )

    def __post_init__(self):
        _text(self.prompt, "prompt")
        responses = tuple(_list(self.responses, "responses"))
        for i, response in enumerate(responses):
            _text(response, f"responses[{i}]")
        if len(responses) < 2:
            raise DataError(
                f"has {len(responses)} response(s); a comparison needs at least 2",
                field="responses",
            )
        object.__setattr__(self, "responses", responses)
        object.__setattr__(self, "ranking", _ranking(self.ranking, len(responses)))
        if self.soft_label is not None:
            p = _number(self.soft_label, "soft_label")
            if len(responses) != 2:
                raise DataError(
                    f"is only defined for 2 responses, this comparison has {len(responses)}",
                    field="soft_label",
                )
            if not 0.0 <= p <= 1.0:
                raise DataError(f"{p} is not a probability in [0, 1]", field="soft_label")
            object.__setattr__(self, "soft_label", p)
        if self.scores is not None:
            items = _list(self.scores, "scores")
            scores = tuple(_number(s, f"scores[{i}]") for i, s in enumerate(items))
            if len(scores) != len(responses):
                raise DataError(
                    f"has {len(scores)} entries for {len(responses)} responses", field="scores"
                )
            object.__setattr__(self, "scores", scores)
        if self.annotator is not None and not isinstance(self.annotator, str):
            raise DataError(
                f"expected a string, got {json_type(self.annotator)}", field="annotator"
            )
        if self.messages is not None:
            object.__setattr__(self, "messages", parse_messages(self.messages))
            check_prompt_conversation(self.messages)

    @property
    def prompt_messages(self) -> tuple[Message, ...] | None:
        """The prompt conversation (responses are separate), or None for plain text."""
        return self.messages

    def pairs(self) -> list[tuple[int, int]]:
        """All C(K, 2) ``(winner, loser)`` index pairs implied by the ranking.

        A full ranking of K implies every pairwise preference between a higher- and a
        lower-ranked response (InstructGPT §3.5 trains on all of them per prompt).
        """
        r = self.ranking
        return [(r[i], r[j]) for i in range(len(r)) for j in range(i + 1, len(r))]

    @classmethod
    def from_json(cls, obj: Mapping) -> Comparison:
        obj = without_nulls(obj)
        messages = None
        if "messages" in obj:
            messages = parse_messages(obj["messages"])
            check_prompt_conversation(messages)
            prompt = obj.get("prompt", conversation_text(messages))
        elif "prompt" in obj:
            prompt = obj["prompt"]
        else:
            raise _missing("prompt", cls.expected)

        pairwise = "chosen" in obj or "rejected" in obj
        if "responses" in obj and pairwise:
            raise DataError(
                "give either 'responses' and 'ranking' or 'chosen' and 'rejected', not both",
                field="chosen" if "chosen" in obj else "rejected",
            )
        if pairwise:
            for field in ("chosen", "rejected"):
                if field not in obj:
                    raise _missing(field, cls.expected)
                _text(obj[field], field)
            responses, ranking = (obj["chosen"], obj["rejected"]), (0, 1)
        else:
            for field in ("responses", "ranking"):
                if field not in obj:
                    raise _missing(field, cls.expected)
            responses, ranking = obj["responses"], obj["ranking"]

        return cls(
            prompt=prompt,
            responses=responses,
            ranking=ranking,
            soft_label=obj.get("soft_label"),
            scores=obj.get("scores"),
            annotator=obj.get("annotator"),
            messages=messages,
        )

    def to_json(self) -> dict:
        out: dict[str, Any] = {
            "prompt": self.prompt,
            "responses": list(self.responses),
            "ranking": list(self.ranking),
        }
        if self.messages is not None:
            out["messages"] = [m.to_json() for m in self.messages]
        for field in ("soft_label", "annotator"):
            if getattr(self, field) is not None:
                out[field] = getattr(self, field)
        if self.scores is not None:
            out["scores"] = list(self.scores)
        return out


_FEEDBACK_CONVERSATION = (
    "a feedback conversation needs earlier turns and must end with the assistant's completion"
)


@dataclass(frozen=True)
class Samples:
    """K sampled responses to one prompt, not yet judged: ``{"prompt" (or "messages"), "responses": [...]}``
    (what ``rlhfkit sample`` writes; ``finished`` and other fields are ignored). Read by ``rlhfkit
    score``; a comparison file reads as samples too (its ranking is ignored)."""

    prompt: str
    responses: tuple[str, ...]
    messages: tuple[Message, ...] | None = None

    kind: ClassVar[str] = "samples"
    expected: ClassVar[str] = "a samples record needs 'prompt' (or 'messages') and 'responses' (a list of strings)"

    def __post_init__(self):
        _text(self.prompt, "prompt")
        responses = tuple(_list(self.responses, "responses"))
        if not responses:
            raise DataError("is an empty list", field="responses")
        for i, response in enumerate(responses):
            if not isinstance(response, str):
                raise DataError(f"expected a string, got {json_type(response)}", field=f"responses[{i}]")
        object.__setattr__(self, "responses", responses)
        if self.messages is not None:
            object.__setattr__(self, "messages", parse_messages(self.messages))
            check_prompt_conversation(self.messages)

    @property
    def prompt_messages(self) -> tuple[Message, ...] | None:
        return self.messages

    @classmethod
    def from_json(cls, obj: Mapping) -> Samples:
        obj = without_nulls(obj)
        messages = parse_messages(obj["messages"]) if "messages" in obj else None
        if "prompt" not in obj and messages is None:
            raise _missing("prompt", cls.expected)
        if "responses" not in obj:
            raise _missing("responses", cls.expected)
        prompt = obj.get("prompt", conversation_text(messages) if messages else None)
        return cls(prompt=prompt, responses=obj["responses"], messages=messages)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"prompt": self.prompt, "responses": list(self.responses)}
        if self.messages is not None:
            out["messages"] = [m.to_json() for m in self.messages]
        return out


@dataclass(frozen=True)
class Feedback:
    """One response judged on its own: thumbs up (``label`` true, desirable) or down (KTO).

    Shapes read (TRL's unpaired preference form included):

    - ``{"prompt": str, "completion": str, "label": bool}``;
    - ``{"messages": [..., assistant], "label"}``: the whole conversation, its last
      (assistant) turn the completion; a string ``prompt`` beside it is kept as the text view,
      a ``completion`` beside it must equal that last turn;
    - ``{"prompt": [messages] | str, "completion": [one assistant message] | str, "label"}``
      with a message list on either side (TRL conversational); ``messages`` holding only the
      prompt conversation, with ``completion``, reads the same.

    ``label`` must be a JSON boolean: 1, 0 or "yes" are refused rather than guessed.
    ``messages`` holds the whole conversation, completion last (as in `Demonstration`). A file
    must hold both labels (`check_file`). `from_comparison` turns a ranking into feedback.
    """

    prompt: str
    completion: str
    label: bool
    annotator: str | None = None
    messages: tuple[Message, ...] | None = None

    kind: ClassVar[str] = "feedback"
    expected: ClassVar[str] = (
        "feedback needs 'label' (true or false) with 'prompt' and 'completion' (strings, or "
        "TRL's message lists) or 'messages' ending with the assistant's completion"
    )

    def __post_init__(self):
        _text(self.prompt, "prompt")
        _text(self.completion, "completion")
        if not isinstance(self.label, bool):
            raise DataError(
                f"expected true (thumbs up) or false (thumbs down), got {json_type(self.label)} "
                f"{self.label!r:.60}",
                field="label",
            )
        if self.annotator is not None and not isinstance(self.annotator, str):
            raise DataError(
                f"expected a string, got {json_type(self.annotator)}", field="annotator"
            )
        if self.messages is not None:
            messages = parse_messages(self.messages)
            object.__setattr__(self, "messages", messages)
            if len(messages) < 2 or messages[-1].role != "assistant":
                raise DataError(
                    _FEEDBACK_CONVERSATION,
                    field="messages",
                )
            check_prompt_conversation(messages[:-1])
            if messages[-1].content != self.completion:
                raise DataError(
                    "differs from the content of the last (assistant) message", field="completion"
                )

    @property
    def prompt_messages(self) -> tuple[Message, ...] | None:
        """The conversation before the completion, or None for plain text."""
        return None if self.messages is None else self.messages[:-1]

    @classmethod
    def from_json(cls, obj: Mapping) -> Feedback:
        obj = without_nulls(obj)
        if "label" not in obj:
            raise _missing("label", cls.expected)
        given = {"label": obj["label"], "annotator": obj.get("annotator")}
        prompt, completion = obj.get("prompt"), obj.get("completion")
        conversation, field = obj.get("messages"), "messages"
        if conversation is None and isinstance(prompt, list | tuple):
            conversation, prompt, field = prompt, None, "prompt"  # TRL's conversational prompt
        if conversation is None:
            if prompt is None:
                raise _missing("prompt", cls.expected)
            if completion is None:
                raise _missing("completion", cls.expected)
            if not isinstance(completion, list | tuple):
                return cls(prompt=prompt, completion=completion, **given)
            conversation = [Message("user", _text(prompt, "prompt"))]
        messages = parse_messages(conversation, field)
        if field == "prompt" or messages[-1].role != "assistant":  # the completion follows
            if completion is None:
                raise _missing("completion", cls.expected)
            check_prompt_conversation(messages, field)
            messages = (*messages, _completion_message(completion))
        elif completion is not None and completion != messages[-1].content:
            raise DataError(
                "'messages' already ends with the assistant's turn; give the completion there "
                "or here, not two different ones",
                field="completion",
            )
        elif len(messages) < 2:
            raise DataError(
                _FEEDBACK_CONVERSATION,
                field="messages",
            )
        if not isinstance(prompt, str):
            prompt = conversation_text(messages[:-1])
        return cls(prompt=prompt, completion=messages[-1].content, messages=messages, **given)

    @classmethod
    def from_comparison(cls, comparison: Comparison) -> tuple[Feedback, Feedback]:
        """(best response as desirable, worst as undesirable); for K = 2 chosen and rejected.

        The middle responses of K > 2 are left out: a ranking says they are worse than one
        response and better than another, not on which side of "good enough" they fall.
        """

        def one(index: int, label: bool) -> Feedback:
            response = comparison.responses[index]
            messages = None
            if comparison.messages is not None:
                messages = (*comparison.messages, Message("assistant", response))
            return cls(comparison.prompt, response, label, comparison.annotator, messages)

        return one(comparison.ranking[0], True), one(comparison.ranking[-1], False)

    @classmethod
    def check_file(cls, records: Sequence[Feedback], source: str) -> None:
        """KTO weighs desirable against undesirable examples: a file needs both labels."""
        ups = sum(r.label for r in records)
        if ups in (0, len(records)):
            only = "true (thumbs up)" if ups else "false (thumbs down)"
            raise DataError(
                f"all {len(records)} records have label {only}; KTO needs both desirable "
                "(true) and undesirable (false) examples",
                source=source,
                field="label",
            )

    def to_json(self) -> dict:
        out: dict[str, Any] = {
            "prompt": self.prompt,
            "completion": self.completion,
            "label": self.label,
        }
        if self.messages is not None:
            out["messages"] = [m.to_json() for m in self.messages]
        if self.annotator is not None:
            out["annotator"] = self.annotator
        return out


def _completion_message(value: Any) -> Message:
    """The judged response: a string, or TRL's list of one assistant message."""
    if isinstance(value, str):
        return Message("assistant", _text(value, "completion"))
    turns = parse_messages(value, "completion")
    if len(turns) != 1 or turns[0].role != "assistant":
        roles = ", ".join(t.role for t in turns)
        raise DataError(
            f"expected one assistant message (the judged response), got {len(turns)} ({roles})",
            field="completion",
        )
    return turns[0]


Record = TextRecord | PromptRecord | Demonstration | Comparison | Samples | Feedback

RECORD_TYPES: dict[str, type[Record]] = {
    cls.kind: cls for cls in (TextRecord, PromptRecord, Demonstration, Comparison, Samples, Feedback)
}
