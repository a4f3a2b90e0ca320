"""The reward-hacking alarms, live in a training loop: `monitor.alarms.AlarmMonitor` wired to a
`TrainSession`, with the configured action (warn, stop, keep_best) applied the same way in every
recipe that has a `monitor:` section (PPO, DPO).

    watch = Watch(s, cfg.monitor, model, tokenizer, start)     # after s.resume(), before prepare()
    for step in ...:
        s.log(step + 1, metrics)
        if watch.after_log(step + 1, metrics, model):             # True: a `stop` alarm fired
            break
    summary.update(watch.finish(model))                          # keep_best: final/ = best step

The monitor sees exactly the rows `metrics.jsonl` gets (every `log.log_every` steps), so a resumed
run replays what the uninterrupted one saw; it appends to the run folder's `alarms.jsonl`. Every
process takes the same branch (flags are or-ed over processes), so the collectives never hang.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from rlhfkit.monitor.alarms import AlarmMonitor, MonitorConfig
from rlhfkit.train.run_dir import read_metrics
from rlhfkit.train.session import TrainSession


class Watch:
    def __init__(self, s: TrainSession, cfg: MonitorConfig, model: torch.nn.Module, tokenizer, start: int):
        self.s, self.cfg, self.tokenizer = s, cfg, tokenizer
        self.mon = AlarmMonitor(cfg, stage=s.stage, verbose=s.is_main,
                                path=s.run.path / "alarms.jsonl" if s.is_main and cfg.enabled else None)
        self.mon.restore(read_metrics(s.run.path, s.stage), start)  # a fresh run (start 0): drops older alarms
        self.keep_best = cfg.action == "keep_best"
        self.stopped: dict[str, Any] = {}
        if self.keep_best:
            self._check_snapshot(model, start)

    def after_log(self, step: int, metrics: dict[str, float], model: torch.nn.Module) -> bool:
        """Check the alarms on a just-logged row and apply the action; True = stop training now."""
        if step % self.s.log_cfg.log_every:
            return False  # not a logged row
        fired = self.mon.update(step, metrics)
        improved, stop = self._any_process(self.mon.improved, self.mon.should_stop)
        if self.keep_best and improved:
            self.s.save_best(step, model, self.tokenizer, self.cfg.best_metric, self.mon.best_value)
        if stop:
            self.stopped = {"stopped_by_alarm": fired[0].name if fired else "alarm", "stopped_at": step}
        return stop

    def finish(self, model: torch.nn.Module) -> dict[str, Any]:
        """Summary entries for run_complete.json; with keep_best, loads the best step into `model`."""
        mon = self.mon
        out = {**self.stopped, "alarms": [a.name for a in mon.alarms], "best_metric": self.cfg.best_metric,
               "best_step": mon.best_step, "best_value": mon.best_value}
        if self.keep_best and mon.best_step is not None:
            best = self.s.restore_best(model)
            if best is None or best["step"] != mon.best_step:
                raise RuntimeError(f"keep_best: best/ holds step {best and best['step']}, the monitor's best is "
                                   f"step {mon.best_step}; was best/ removed?")
            out["final_step"] = best["step"]
        return out

    def _check_snapshot(self, model: torch.nn.Module, start: int) -> None:
        """On resume: best/ must hold the replayed best step. It may not, when a newer best (after
        the resumed checkpoint) overwrote it and was then dropped as a lost future. If the best is
        the resumed step itself, its weights are right here; otherwise they are gone, and the
        search for the best starts again from the resumed step (said loudly)."""
        mon, s = self.mon, self.s
        if mon.best_step is None:
            return
        info = s.best_dir / "best.json"
        held = json.loads(info.read_text())["step"] if info.exists() else None
        if held == mon.best_step:
            return
        if mon.best_step == start:
            s.save_best(start, model, self.tokenizer, self.cfg.best_metric, mon.best_value)
            return
        if s.is_main:
            print(f"[{s.stage}] keep_best: the snapshot of best step {mon.best_step} was overwritten after the "
                  f"resumed checkpoint (step {start}); the best is searched again from step {start}", flush=True)
        mon.best_step, mon.best_value = None, None

    def _any_process(self, *flags: bool) -> list[bool]:
        """Each flag, true if it is true on any process: the monitor sees the same reduced metrics
        everywhere, but a branch taken by some processes only would hang the collectives."""
        if self.s.world_size == 1:
            return list(flags)
        t = torch.tensor([float(f) for f in flags], device=self.s.device)
        return [bool(v) for v in self.s.accelerator.reduce(t, "sum").tolist()]
