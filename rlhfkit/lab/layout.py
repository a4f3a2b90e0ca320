"""Where a lab lives on disk and how to tell a complete one from a partial one.

Layout of a built lab folder:

    <lab>/manifest.json           key, seed, size, build seconds, measured metrics
    <lab>/base/                   HF model + tokenizer (`from_pretrained` works on it)
    <lab>/data/pretrain_eval.jsonl      {"text"}                held-out text, perplexity
    <lab>/data/sft_train.jsonl          {"prompt", "response"}  positive-leaning demos
    <lab>/data/sft_eval.jsonl           {"prompt", "response"}
    <lab>/data/prompts_train.jsonl      {"prompt"}              review openings
    <lab>/data/prompts_eval.jsonl       {"prompt"}              distinct from train

Why the manifest is the completeness marker: `build_lab` writes it last, inside a
temporary folder that is renamed into place in one step, so a folder with a readable
manifest is a finished build, and a crashed build never is. A finished build is current when its
manifest's key is `spec.lab_key()`, the hash of the code and config that build a lab.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rlhfkit.lab.spec import lab_key

MANIFEST = "manifest.json"
BASE_DIR = "base"
DATA_DIR = "data"
DATA_FILES = (
    "pretrain_eval",
    "sft_train",
    "sft_eval",
    "prompts_train",
    "prompts_eval",
)
SIZE_ORDER = ("tiny", "full")  # increasing: a larger lab serves a smaller request


def default_lab_dir() -> Path:
    """`$RLHFKIT_LAB_DIR`, else `<cache>/rlhfkit/lab-<key>` with cache = `$XDG_CACHE_HOME` or
    `~/.cache`: changed lab code builds a new folder and leaves labs of other code versions alone."""
    override = os.environ.get("RLHFKIT_LAB_DIR")
    if override:
        return Path(override).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "rlhfkit" / f"lab-{lab_key()}"


def read_manifest(lab: str | Path) -> dict | None:
    """The lab's manifest, or None when it is missing or unreadable (a partial folder)."""
    try:
        return json.loads((Path(lab) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def is_built(lab: str | Path, size: str = "tiny") -> bool:
    """True for a complete lab built by the current code (its key) whose size is at least `size`."""
    manifest = read_manifest(lab)
    return (
        manifest is not None
        and manifest.get("key") == lab_key()
        and manifest.get("size") in SIZE_ORDER
        and SIZE_ORDER.index(manifest["size"]) >= SIZE_ORDER.index(size)
        and (Path(lab) / BASE_DIR / "config.json").is_file()
    )


def data_path(lab: str | Path, name: str) -> Path:
    """Path of data file `name` (one of DATA_FILES) inside `lab`."""
    if name not in DATA_FILES:
        raise KeyError(f"unknown lab data file {name!r}; choose from {', '.join(DATA_FILES)}")
    return Path(lab) / DATA_DIR / f"{name}.jsonl"
