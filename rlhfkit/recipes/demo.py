"""`rlhfkit demo` and `rlhfkit pipeline`: the whole pipeline on the lab default, or from a YAML.

The demo is `demo.yaml` beside this file: SFT, comparisons from the simulated annotators, a reward
model, PPO with a tuned KL penalty, PPO with beta = 0 (to show over-optimisation and the alarm that
catches it), DPO, then an evaluation of every model and the report.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

from rlhfkit.config import load_config, to_yaml
from rlhfkit.data import read_jsonl
from rlhfkit.recipes.pipeline import PipelineConfig, run


def demo_config_path() -> Path:
    return Path(str(resources.files("rlhfkit.recipes") / "demo.yaml"))


def run_pipeline(args: argparse.Namespace) -> int:
    path = getattr(args, "config", None) or demo_config_path()
    cfg = load_config(PipelineConfig, path, getattr(args, "overrides", []))
    if getattr(args, "print_config", False):
        print(to_yaml(cfg), end="")
        return 0
    out = run(cfg, args.out, resume=not getattr(args, "fresh", False))
    print_summary(out)
    return 0


def print_summary(out: Path) -> None:
    """One screen: each model's gold, KL and perplexity, the alarms, where the report is."""
    summary_file = out / "summary.json"
    if not summary_file.exists():
        return
    summary = json.loads(summary_file.read_text())
    keys = ["gold/mean", "kl/mean", "eval/perplexity", "response/length", "response/eos_rate"]
    print("\n" + "model".ljust(14) + "".join(k.rjust(18) for k in keys))
    for name, m in summary.items():
        print(name.ljust(14) + "".join(f"{m.get(k, float('nan')):18.3f}" for k in keys))
    on = {k: v for m in summary.values() for k, v in m.items() if isinstance(v, str)}
    if on:
        print("measured on: " + ", ".join(f"{k}={v}" for k, v in on.items()))
    for alarms in sorted(out.glob("*/alarms.jsonl")):
        for a in read_jsonl(alarms, torn_tail="skip"):
            print(f"[alarm] {alarms.parent.name} step {a['step']}: {a['name']}: {a['message']}")
    if (out / "report.html").exists():
        print(f"\nreport: {out / 'report.html'}")
