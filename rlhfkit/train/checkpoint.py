"""Resumable checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint folder `checkpoints/step-N/` holds HF model folders (one per trained model), the
optimizer and scheduler state, RNG states and the trainer state (step, data order). It is written
under a temporary name, gets its completion marker (`checkpoint_complete.json`) last, and is then
renamed into place; only folders with the marker count as checkpoints. Old checkpoints are removed
by first renaming them to a temporary name, so a kill at any moment (while saving, while pruning)
never leaves a folder that looks complete but is not; leftover temporaries are removed later.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rlhfkit.models.loading import follow_umask

_STEP_DIR = re.compile(r"^step-(\d+)$")
COMPLETE = "checkpoint_complete.json"  # written last inside a checkpoint: present = complete


# ----------------------------------------------------------------------------- state trees


def save_tree(tree: Any, folder: Path, name: str) -> None:
    """Save a nested dict/list of tensors and plain values as `name.safetensors` + `name.json`."""
    tensors: dict[str, torch.Tensor] = {}

    def encode(x: Any, path: str) -> Any:
        if isinstance(x, torch.Tensor):
            tensors[path] = x.detach().cpu().contiguous()
            return {"__tensor__": path}
        if isinstance(x, np.ndarray):
            return {"__ndarray__": x.tolist(), "dtype": str(x.dtype)}
        if isinstance(x, dict):
            if all(isinstance(k, str) for k in x):
                return {"__dict__": {k: encode(v, f"{path}.{k}") for k, v in x.items()}}
            return {"__items__": [[encode(k, f"{path}.k{i}"), encode(v, f"{path}.{i}")] for i, (k, v) in enumerate(x.items())]}
        if isinstance(x, tuple):
            return {"__tuple__": [encode(v, f"{path}.{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [encode(v, f"{path}.{i}") for i, v in enumerate(x)]
        if isinstance(x, (bool, int, float, str)) or x is None:
            return x
        if isinstance(x, (np.integer, np.floating)):
            return x.item()
        raise TypeError(f"cannot checkpoint value of type {type(x).__name__} at {path}")

    skeleton = encode(tree, "root")
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / f"{name}.safetensors"))
    follow_umask(folder / f"{name}.safetensors")
    (folder / f"{name}.json").write_text(json.dumps(skeleton))


def load_tree(folder: Path, name: str) -> Any:
    tensors = load_file(str(folder / f"{name}.safetensors"))
    skeleton = json.loads((folder / f"{name}.json").read_text())

    def decode(x: Any) -> Any:
        if isinstance(x, list):
            return [decode(v) for v in x]
        if isinstance(x, dict):
            if "__tensor__" in x:
                return tensors[x["__tensor__"]]
            if "__ndarray__" in x:
                return np.asarray(x["__ndarray__"], dtype=x["dtype"])
            if "__dict__" in x:
                return {k: decode(v) for k, v in x["__dict__"].items()}
            if "__items__" in x:
                return {decode(k): decode(v) for k, v in x["__items__"]}
            if "__tuple__" in x:
                return tuple(decode(v) for v in x["__tuple__"])
        return x

    return decode(skeleton)


# ----------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ----------------------------------------------------------------------------- folders


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `root` (those with the completion marker), oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / COMPLETE).is_file()]
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


class CheckpointWriter:
    """Context manager yielding a temporary folder that becomes `root/step-N` on success.

        with CheckpointWriter(root, step) as tmp:
            model.save_pretrained(tmp / "policy") ...
    """

    def __init__(self, root: Path, step: int, keep: int = 0):
        self.root, self.step, self.keep = Path(root), step, keep
        self.tmp = self.root / f".tmp-step-{step}-{os.getpid()}"

    def __enter__(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in [*self.root.glob(".tmp-step-*"), *self.root.glob(".del-*")]:  # from a killed process
            shutil.rmtree(stale, ignore_errors=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        write_json(self.tmp / COMPLETE, {"step": self.step})
        _fsync_tree(self.tmp)
        final = self.root / f"step-{self.step}"
        if final.exists():
            remove_folder(final)
        os.replace(self.tmp, final)
        _fsync_dir(self.root)
        if self.keep > 0:
            for _, old in list_checkpoints(self.root)[: -self.keep]:
                remove_folder(old)


def remove_folder(folder: Path) -> None:
    """Delete a folder so that a kill midway never leaves it half-deleted under its own name: one
    rename takes it out of sight (to a `.del-` name that later writers clean up), then it is deleted."""
    gone = folder.with_name(f".del-{folder.name}-{os.getpid()}")
    os.replace(folder, gone)
    shutil.rmtree(gone, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2))

