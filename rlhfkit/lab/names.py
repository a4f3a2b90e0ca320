"""The lab's named models, resolved here so that loading code only hands names on: `lab` (the tiny
base model) and `lab:assistant` (the CAI assistant, lab/cai_corpus.py), each built on first use."""

from __future__ import annotations

from pathlib import Path

from rlhfkit.errors import UserError

MODELS = ("lab", "lab:assistant")


class LabNameError(UserError):
    """A `lab:` name the lab does not have."""


def is_lab_name(name: str) -> bool:
    return name == "lab" or name.startswith("lab:")


def model_dir(name: str) -> Path:
    """The folder of the lab model `name` (building the lab, or training the assistant, if needed)."""
    if name == "lab":
        from rlhfkit.lab.build import base_model_dir

        return base_model_dir()
    if name == "lab:assistant":
        from rlhfkit.lab.cai_corpus import ensure_assistant

        return ensure_assistant()
    raise LabNameError(f"model '{name}': unknown lab model (the lab has {', '.join(repr(m) for m in MODELS)})")
