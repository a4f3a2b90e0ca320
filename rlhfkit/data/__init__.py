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
    IGNORE_INDEX,
    attention_mask,
    collate_demonstrations,
    encode_demonstration,
    encode_prompt,
    encode_response,
    pack_demonstrations,
    pad_batch,
)

__all__ = [
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
    "collate_demonstrations",
    "encode_demonstration",
    "encode_prompt",
    "encode_response",
    "pack_demonstrations",
    "pad_batch",
    "read_jsonl",
    "read_records",
    "write_jsonl",
]
