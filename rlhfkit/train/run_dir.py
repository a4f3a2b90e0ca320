"""The run folder: resolved config, metrics log, checkpoints, final model.

    out/config.yaml          resolved config (with a help comment per field)
    out/metrics.jsonl        one JSON object per logged step: step, stage, slash-named metrics
    out/checkpoints/step-N/  everything resume needs (written atomically)
    out/final/               HF save_pretrained folder with tokenizer
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from rlhfkit.config import to_yaml
from rlhfkit.data.jsonl import read_jsonl, write_jsonl


class RunDir:
    def __init__(self, path: str | Path, is_main: bool = True):
        self.path = Path(path)
        self.is_main = is_main
        if is_main:
            self.path.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def final(self) -> Path:
        return self.path / "final"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def write_config(self, cfg: Any) -> None:
        if self.is_main:
            atomic_write_text(self.path / "config.yaml", to_yaml(cfg))

    def is_complete(self) -> bool:
        """A run is complete once its final/ folder has been renamed into place."""
        return (self.final / "run_complete.json").is_file()


class MetricsLog:
    """Append-only JSONL metrics, flushed per line so a crash loses nothing logged.

    On resume the lines of this stage past the resumed step are dropped first, so the log reads
    as if the run had never stopped.
    """

    def __init__(self, path: Path, stage: str, is_main: bool = True, accelerator: Any = None):
        self.path, self.stage, self.is_main, self.accelerator = path, stage, is_main, accelerator

    def truncate_after(self, step: int) -> None:
        if not self.is_main or not self.path.exists():
            return
        kept = [row for row in read_jsonl(self.path, torn_tail="skip")
                if not (row.get("stage") == self.stage and row.get("step", 0) > step)]
        write_jsonl(self.path, kept)

    def log(self, step: int, metrics: dict[str, float]) -> dict[str, Any]:
        row = {"step": step, "stage": self.stage}
        row.update({k: _jsonable(v) for k, v in metrics.items()})
        if self.is_main:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
        if self.accelerator is not None and self.accelerator.trackers:
            self.accelerator.log({k: v for k, v in row.items() if isinstance(v, float)}, step=step)
        return row


def read_metrics(path: str | Path, stage: str | None = None) -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    rows = read_jsonl(path, torn_tail="skip") if path.exists() else []
    return [r for r in rows if stage is None or r.get("stage") == stage]


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them visible instead of failing the log
    return v


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
