"""What every training recipe shares: accelerator, run folder, metrics, checkpoints, resume.

A recipe owns its loop; this class owns the bookkeeping around it, so that resume, atomic
checkpoints and the final HF folder behave the same in SFT, reward, DPO and PPO.

`train.sharding: fsdp` (or an `accelerate launch` FSDP config) makes the accelerator a
`shard.ShardedAccelerator` (any number of processes, one included): the recipe's `prepare` calls
shard instead of wrapping in DDP; checkpoints hold torch.distributed.checkpoint shards
(`checkpoints/step-N/sharded/`), loaded once the models are sharded; final/ is gathered into a
plain HF folder (LoRA merged).

    s = TrainSession(cfg, out, stage="sft", resume=True)      # writes nothing yet
    ... read and validate the data, load the models ...
    start, extra = s.resume({"policy": model}, optimizer, scheduler)   # prepares the run folder
    for step in range(start, total): ...; s.log(step + 1, metrics); s.maybe_save(step + 1, ...)
    s.finish({"policy": model}, tokenizer)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, set_seed

from rlhfkit.config import LogConfig, TrainConfig
from rlhfkit.errors import UserError
from rlhfkit.models.loading import load_weights, plain_copy, publish_folder, save_hf
from rlhfkit.train.checkpoint import (
    CheckpointWriter,
    latest_checkpoint,
    load_tree,
    rng_state,
    save_tree,
    set_rng_state,
)
from rlhfkit.train.run_dir import MetricsLog, RunDir
from rlhfkit.train.shard import (
    SHARDED_DIR,
    ShardedAccelerator,
    full_state_dict,
    launcher_asks_fsdp,
    load_sharded,
    save_sharded,
)


class TrainSession:
    """Writes nothing when built: the run folder is prepared by `prepare` (called by `resume`),
    which every recipe calls only after reading its data and loading its models, so a failed
    start leaves the folder as it was. With `resume`, a changed config is refused here, early."""

    def __init__(self, cfg: Any, out: str | Path, stage: str, resume: bool = False):
        train: TrainConfig = cfg.train
        self.log_cfg: LogConfig = cfg.log
        _release_precision(train.mixed_precision)
        # The launcher's check first: it clears its flag. One process shards too (a group of one).
        self.sharded = launcher_asks_fsdp() or train.sharding == "fsdp"
        self.accelerator = (ShardedAccelerator if self.sharded else Accelerator)(
            # Without CUDA, say so: accelerate then runs torchrun-launched processes as
            # multi-CPU (gloo) instead of as independent single processes.
            cpu=not torch.cuda.is_available(),
            mixed_precision=train.mixed_precision,
            log_with=list(self.log_cfg.trackers) or None,
            project_dir=str(out),
        )
        set_seed(train.seed)
        self.cfg, self.stage, self.want_resume = cfg, stage, resume
        self.run = RunDir(out, is_main=self.is_main)
        self.metrics = MetricsLog(self.run.metrics_path, stage, self.is_main, self.accelerator)
        if resume:
            self.run.check_resume(cfg)
        self._checkpoint: Path | None = None
        self._prepared = False
        self.started = time.time()

    def prepare(self) -> None:
        """Prepare the run folder for writing (once): a fresh run clears what an older run left;
        a resumed one drops the metrics rows past its checkpoint (all of them when there is none,
        as after a kill during the first checkpoint). Both write the resolved config."""
        if self._prepared:
            return
        self._prepared = True
        self._checkpoint = latest_checkpoint(self.run.checkpoints) if self.want_resume else None
        restart = self.want_resume and self._checkpoint is None and self.run.has_run()
        self.run.prepare(self.cfg, fresh=not self.want_resume)
        if self.want_resume:
            self.metrics.truncate_after(self._checkpoint_step())
        if restart and self.is_main:
            print(f"[{self.stage}] no checkpoint in {self.run.checkpoints}: starting fresh from step 0", flush=True)
        self.accelerator.wait_for_everyone()
        if self.log_cfg.trackers:
            self.accelerator.init_trackers(self.stage, config={"stage": self.stage})

    def _checkpoint_step(self) -> int:
        if self._checkpoint is None:
            return 0
        return json.loads((self._checkpoint / "trainer_state.json").read_text())["step"]

    # ------------------------------------------------------------------ process info
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def shard_frozen(self, model):
        """A frozen model the recipe keeps for the whole run (reward models, a separate reference):
        under sharding, sharded like the trained ones (1/N of its weights per process, gathered
        block by block in each forward); otherwise, and for a LoRA policy's own base, as it is."""
        if self.sharded and model is not None and not hasattr(model, "_policy"):  # not AdapterDisabled
            self.accelerator.prepare_model(model, evaluation_mode=True)
        return model

    def progress(self, total: int, initial: int = 0, desc: str | None = None):
        from tqdm.auto import tqdm

        show = self.log_cfg.progress and self.is_main and os.environ.get("RLHFKIT_PROGRESS", "1") != "0"
        return tqdm(total=total, initial=initial, desc=desc or self.stage, dynamic_ncols=True, disable=not show)

    # ------------------------------------------------------------------ resume / save
    def resume(self, models: dict[str, torch.nn.Module], optimizer=None, scheduler=None) -> tuple[int, dict]:
        """Prepare the run folder and, when resuming from a checkpoint, restore it; returns
        (step, extra trainer state), (0, {}) for a fresh start."""
        self.prepare()
        ckpt = self._checkpoint
        self._drop_best_after(self._checkpoint_step())
        if ckpt is None:
            return 0, {}
        if (ckpt / SHARDED_DIR).is_dir() != self.sharded:
            was = "sharded (train.sharding=fsdp)" if (ckpt / SHARDED_DIR).is_dir() else "not sharded"
            raise ResumeLayoutError(f"{ckpt}: the checkpoint is {was} and this run is not: resume it with the "
                                    "train.sharding it was written with")
        if self.sharded:  # a sharded checkpoint loads into sharded models: once `prepare` has sharded them
            def load(prepared) -> None:
                if prepared is not optimizer:
                    raise RuntimeError("the optimizer prepared is not the one given to resume()")
                load_sharded(ckpt / SHARDED_DIR, models, optimizer)
            self.accelerator.on_prepare = load
        else:
            for name, model in models.items():
                load_weights(self.accelerator.unwrap_model(model), ckpt / name)
            if optimizer is not None:
                optimizer.load_state_dict(load_tree(ckpt, "optimizer"))
        if scheduler is not None:
            scheduler.load_state_dict(json.loads((ckpt / "scheduler.json").read_text()))
        state = json.loads((ckpt / "trainer_state.json").read_text())
        rng_file = f"rng-{self.rank}"
        if (ckpt / f"{rng_file}.json").exists():
            set_rng_state(load_tree(ckpt, rng_file))
        if self.is_main:
            print(f"[{self.stage}] resumed from {ckpt} (step {state['step']})")
        return state["step"], state.get("extra", {})

    def maybe_save(self, step: int, total: int, models, optimizer=None, scheduler=None, extra=None, tokenizer=None):
        every = self.log_cfg.save_every
        if every > 0 and step % every == 0 and step < total:
            self.save(step, models, optimizer, scheduler, extra, tokenizer)

    def save(self, step: int, models, optimizer=None, scheduler=None, extra=None, tokenizer=None) -> None:
        self.prepare()
        acc = self.accelerator
        # Every process writes its own RNG state (and, sharded, its shards); the main process writes
        # the rest, then renames.
        root = self.run.checkpoints
        tmp_rng, tmp_shards = root / f".rng-{step}", root / f".shards-{step}"
        if self.is_main:
            root.mkdir(parents=True, exist_ok=True)
            for stale in root.glob(".shards-*"):  # a killed save's shards (maybe of another process count)
                shutil.rmtree(stale, ignore_errors=True)
        acc.wait_for_everyone()
        states = {} if self.sharded else {name: acc.get_state_dict(m) for name, m in models.items()}
        if self.sharded:
            save_sharded(tmp_shards, models, optimizer)
        save_tree(rng_state(), tmp_rng, f"rng-{self.rank}")
        acc.wait_for_everyone()
        if self.is_main:
            with CheckpointWriter(root, step, keep=self.log_cfg.keep_checkpoints) as tmp:
                if self.sharded:
                    os.replace(tmp_shards, tmp / SHARDED_DIR)
                for name, model in ([] if self.sharded else models.items()):
                    save_hf(acc.unwrap_model(model), tokenizer, tmp / name, state_dict=states[name], merged=False)
                if optimizer is not None and not self.sharded:
                    save_tree(optimizer.state_dict(), tmp, "optimizer")
                if scheduler is not None:
                    (tmp / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
                for f in tmp_rng.iterdir():
                    os.replace(f, tmp / f.name)
                tmp_rng.rmdir()
                state = {"step": step, "stage": self.stage, "seed": self.cfg.train.seed, "extra": extra or {},
                         "processes": self.world_size, "sharded": self.sharded}
                (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        acc.wait_for_everyone()

    # ------------------------------------------------------------------ keep-best snapshot
    @property
    def best_dir(self) -> Path:
        return self.run.path / "best"

    def save_best(self, step: int, model: torch.nn.Module, tokenizer, metric: str, value: float) -> None:
        """Snapshot `model` as best/ (an HF folder, LoRA: adapters only) with best.json, atomically.

        For the monitor's keep_best action: the recipe calls this whenever its best metric improves
        and `restore_best` before `finish`, so final/ holds the best step's weights."""
        self.prepare()
        acc = self.accelerator
        if self.sharded and acc.on_prepare is not None:  # resumed weights load at prepare: snapshot after
            load = acc.on_prepare

            def load_then_snapshot(optimizer) -> None:
                load(optimizer)
                self.save_best(step, model, tokenizer, metric, value)
            acc.on_prepare = load_then_snapshot
            return
        if self.sharded:  # best/ holds the shards: restore_best loads them back into the sharded model
            tmp = self.run.path / ".best-tmp-sharded"
            if self.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            acc.wait_for_everyone()
            save_sharded(tmp / SHARDED_DIR, {"model": model})
        else:
            state = acc.get_state_dict(model)
            tmp = self.run.path / f".best-tmp-{os.getpid()}"
        if self.is_main:
            if not self.sharded:
                save_hf(acc.unwrap_model(model), tokenizer, tmp, state_dict=state, merged=False)
            (tmp / "best.json").write_text(json.dumps({"step": step, "metric": metric, "value": value}, indent=2))
            publish_folder(tmp, self.best_dir)
        acc.wait_for_everyone()

    def restore_best(self, model: torch.nn.Module) -> dict | None:
        """Load best/'s weights into `model` (every process); returns best.json, or None if none."""
        info = self.best_dir / "best.json"
        if not info.exists():
            return None
        if self.sharded:
            load_sharded(self.best_dir / SHARDED_DIR, {"model": model})
        else:
            load_weights(self.accelerator.unwrap_model(model), self.best_dir)
        return json.loads(info.read_text())

    def _drop_best_after(self, step: int) -> None:
        """On resume, a best/ snapshot from after the resumed step belongs to a lost future."""
        info = self.best_dir / "best.json"
        if self.is_main and info.exists() and json.loads(info.read_text())["step"] > step:
            shutil.rmtree(self.best_dir)
        self.accelerator.wait_for_everyone()

    def finish(self, models: dict[str, torch.nn.Module], tokenizer, primary: str, summary: dict | None = None) -> Path:
        """Write final/ (the `primary` model as an HF folder; others in final/<name>/) atomically."""
        self.prepare()
        acc = self.accelerator
        acc.wait_for_everyone()
        # Full state dicts: gathered from the shards onto the main process (a collective), or DDP's.
        states = {name: (full_state_dict if self.sharded else acc.get_state_dict)(m) for name, m in models.items()}
        if self.is_main:
            tmp = self.run.path / f".final-tmp-{os.getpid()}"
            for name, model in models.items():
                folder = tmp if name == primary else tmp / name
                if self.sharded:  # a plain model of the same class around the gathered tensors (LoRA: merged)
                    save_hf(plain_copy(model, states[name]), tokenizer, folder)
                else:
                    save_hf(acc.unwrap_model(model), tokenizer, folder, state_dict=states[name])
            done = {"stage": self.stage, "seconds": round(time.time() - self.started, 2), **(summary or {})}
            (tmp / "run_complete.json").write_text(json.dumps(done, indent=2))
            publish_folder(tmp, self.run.final)
        acc.wait_for_everyone()
        if self.log_cfg.trackers:
            acc.end_training()
        return self.run.final

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.prepare()
        if self.sharded and self.accelerator.on_prepare is not None:
            raise RuntimeError("resumed from a sharded checkpoint, but the models were never prepared: "
                               "nothing was loaded")
        if step % self.log_cfg.log_every == 0:
            self.metrics.log(step, metrics)


class ResumeLayoutError(UserError):
    """A checkpoint written sharded resumed unsharded, or the other way round."""


def _release_precision(mixed_precision: str) -> None:
    """Let this stage choose its own `mixed_precision` when an earlier one in the same process
    (pipeline, iterate, tests) chose another: accelerate keeps one process-wide AcceleratorState
    and refuses to change its precision. Only that state is dropped; the process group
    (PartialState) is kept. DeepSpeed takes its precision from its own config, so it is left alone."""
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != mixed_precision and state.get("distributed_type") != DistributedType.DEEPSPEED:
        AcceleratorState._reset_state(reset_partial_state=False)
