"""Record types, readers with file:line errors, and tokenising/collating."""

from rlhfkit.data.jsonl import append_jsonl, read_jsonl, write_jsonl
from rlhfkit.data.readers import read_records
from rlhfkit.data.records import (
    RECORD_TYPES,
    Comparison,
    DataError,
    Demonstration,
    Message,
    PromptRecord,
    Record,
    TextRecord,
)
from rlhfkit.data.tokenize import (
    CHARS_PER_TOKEN,
    IGNORE_INDEX,
    attention_mask,
    char_budget,
    collate_demonstrations,
    encode_demonstration,
    encode_prompt,
    encode_prompt_responses,
    encode_response,
    encode_response_after,
    encode_text,
    pack_demonstrations,
    pad_batch,
)

__all__ = [
    "CHARS_PER_TOKEN",
    "IGNORE_INDEX",
    "RECORD_TYPES",
    "Comparison",
    "DataError",
    "Demonstration",
    "Message",
    "PromptRecord",
    "Record",
    "TextRecord",
    "append_jsonl",
    "attention_mask",
    "char_budget",
    "collate_demonstrations",
    "encode_demonstration",
    "encode_prompt",
    "encode_prompt_responses",
    "encode_response",
    "encode_response_after",
    "encode_text",
    "pack_demonstrations",
    "pad_batch",
    "read_jsonl",
    "read_records",
    "write_jsonl",
]
