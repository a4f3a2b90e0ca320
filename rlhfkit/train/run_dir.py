"""The run folder: resolved config, metrics log, checkpoints, final model.

    out/config.yaml          resolved config (with a help comment per field)
    out/metrics.jsonl        one JSON object per logged step: step, stage, slash-named metrics
    out/checkpoints/step-N/  everything resume needs (written atomically, every log.save_every steps)
    out/final/               HF save_pretrained folder with tokenizer; final/run_complete.json = done

Lifecycle. Nothing is written until the recipe has read its data and loaded its models
(`prepare`), so a typo costs nothing and a failed start leaves no folder behind. A fresh start
removes what an older run left (`RUN_ARTIFACTS`); a resume keeps it and may change only the
`SAFE_ON_RESUME` config keys. `check_start` is the CLI's guard: a finished run is replaced only
with --overwrite, and an unfinished one needs --resume or --overwrite.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from rlhfkit.config import ConfigError, to_yaml
from rlhfkit.data.jsonl import read_jsonl, write_jsonl
from rlhfkit.errors import UserError

# What a run writes into its folder (names or globs): a fresh start removes them first, so no
# metric, checkpoint, plot or model of an older run is mixed into the new one. DPO's
# ref_logps.safetensors stays: it is a cache keyed on its inputs, never stale.
RUN_ARTIFACTS = ("config.yaml", "metrics.jsonl", "alarms.jsonl", "checkpoints", "best", "final", "members",
                 "round-*", "report.html", "report_plots", "reward_eval.json", "normalization_samples.jsonl",
                 "stage_complete.json", ".final-tmp-*", ".best-tmp-*")

# Config keys that may differ on --resume (matched against the end of a dotted key, so they hold
# inside nested configs such as iterate's ppo.train.max_steps too): how long to train, what to
# log and save, and what only changes memory or speed. Any other change would make the resumed run
# a different experiment than the checkpoint's, so it is refused.
SAFE_ON_RESUME = ("train.max_steps", "train.epochs", "train.micro_batch_size", "model.gradient_checkpointing", "log.*")


class RunFolderError(UserError):
    """--out holds a run that this command must not silently replace or continue."""


class RunDir:
    def __init__(self, path: str | Path, is_main: bool = True):
        self.path = Path(path)
        self.is_main = is_main

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def final(self) -> Path:
        return self.path / "final"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    def write_config(self, cfg: Any) -> None:
        if self.is_main:
            atomic_write_text(self.config_path, to_yaml(cfg))

    def is_complete(self) -> bool:
        """A run is complete once its final/ folder has been renamed into place (a reward-model
        ensemble's final/ holds the ensemble manifest instead of run_complete.json) and the files
        its run_complete.json says are still to come (`"needs"`, e.g. a reward model's
        normalisation, written after final/) are there."""
        if (self.final / "ensemble.json").is_file():
            return True
        done = self.final / "run_complete.json"
        if not done.is_file():
            return False
        try:
            needs = json.loads(done.read_text()).get("needs", [])
        except ValueError:
            return False
        return all((self.final / name).is_file() for name in needs)

    def has_run(self) -> bool:
        """Whether an earlier run (finished or not) left its files here."""
        return any((self.path / name).exists() for name in ("config.yaml", "metrics.jsonl", "checkpoints", "final"))

    def prepare(self, cfg: Any, fresh: bool) -> None:
        """Make the folder ready for writing, once the run's inputs are validated: a fresh run
        first removes what an older run left here; both write the resolved config."""
        if not self.is_main:
            return
        if fresh and self.has_run():
            self.clear()
        self.path.mkdir(parents=True, exist_ok=True)
        self.write_config(cfg)

    def clear(self) -> None:
        """Remove every `RUN_ARTIFACTS` entry (and nothing else: --out may hold the user's files)."""
        for pattern in RUN_ARTIFACTS:
            for p in self.path.glob(pattern):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()

    def changed_keys(self, cfg: Any) -> list[str]:
        """Keys whose value in `cfg` differs from this run's config.yaml, except `SAFE_ON_RESUME`,
        as 'key (old -> new)'. Keys on one side only (a config written by another rlhfkit
        version) are not compared."""
        if not self.config_path.is_file():
            return []
        old = _flatten(yaml.safe_load(self.config_path.read_text()) or {})
        new = _flatten(yaml.safe_load(to_yaml(cfg)))  # through YAML, so tuples and lists compare equal
        return [f"{k} ({old[k]!r} -> {new[k]!r})" for k in new
                if k in old and old[k] != new[k] and not _safe_on_resume(k)]

    def check_resume(self, cfg: Any) -> None:
        changed = self.changed_keys(cfg)
        if changed:
            raise ConfigError(
                f"cannot resume {self.path}: the config differs from its config.yaml in {', '.join(changed)}; "
                f"resume with the run's config, or start over with --overwrite (keys that may change on resume: "
                f"{', '.join(SAFE_ON_RESUME)})")


def check_start(out: str | Path, cfg: Any, resume: bool, overwrite: bool) -> bool:
    """The CLI's guard before a training verb touches `out`; True = nothing to do (already done).

    A finished run is replaced only with `overwrite`; `resume` on it has nothing to do. An
    unfinished run needs `resume` (same config, up to SAFE_ON_RESUME) or `overwrite`."""
    run = RunDir(out)
    if overwrite:
        return False
    if run.is_complete():
        if resume:
            return True
        raise RunFolderError(f"{out} holds a finished run; pass --overwrite to replace it, or choose another --out")
    if resume:
        run.check_resume(cfg)
    elif run.has_run():
        raise RunFolderError(f"{out} holds an unfinished run; pass --resume to continue it or --overwrite to start over")
    return False


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _safe_on_resume(key: str) -> bool:
    parts = key.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[i:]), pat) for i in range(len(parts)) for pat in SAFE_ON_RESUME)


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
