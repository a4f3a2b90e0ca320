"""`make bench`: run every side-by-side benchmark against TRL, the memory / throughput and the
LoRA-vs-full gold benchmarks, and record the results.

Each benchmark prints its own JSON/table; this runs them one after another (never in parallel:
they share the machine), then writes docs/BENCHMARKS_LATEST.md with the machine, versions, the
exact commands and each one's output, so docs/BENCHMARKS.md's ratios can be re-checked.
"""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LORA_HEAD = "[c_attn, c_proj, c_fc, lm_head]"  # GPT-2's linear layers + the output head (docs/BENCHMARKS.md)
COMMANDS = [
    ["benchmarks/sft.py", "--steps", "30", "--repeats", "2"],
    ["benchmarks/reward.py", "--repeats", "2"],
    ["benchmarks/dpo.py", "--steps", "30", "--repeats", "2"],
    ["benchmarks/kto.py", "--steps", "30", "--repeats", "3"],
    ["benchmarks/orpo.py", "--steps", "30", "--repeats", "3"],
    ["benchmarks/ppo.py", "--steps", "6", "--repeats", "2"],
    ["benchmarks/grpo.py", "--steps", "6", "--repeats", "2"],
    ["benchmarks/rloo.py", "--steps", "6", "--repeats", "2"],
    ["benchmarks/memory.py"],  # lab: sft, reward, dpo, ppo x full / lora / +gc
    ["benchmarks/memory.py", "--model", "gpt2-100m", "--steps", "3", "--batch", "4", "--examples", "16"],
    ["benchmarks/lora_gold.py", "--recipes", "sft,dpo", "--lora-lr", "1.5e-3", "--lora-targets", LORA_HEAD],
    ["benchmarks/lora_gold.py", "--recipes", "ppo", "--full-lr", "1e-4", "--lora-lr", "1.5e-4", "--lora-targets", LORA_HEAD],
    ["benchmarks/kto_lab.py", "--out", "runs/kto_lab"],  # KTO vs DPO at equal judgements, ORPO vs SFT+DPO, 3 seeds
    ["benchmarks/mfu.py", "--candidates"],  # model FLOP utilisation + the candidate fixes (docs/BENCHMARKS.md)
    # docs/FINDINGS.md, hours on 2 cores; the law benchmark reuses the ensemble benchmark's runs (runs/findings)
    ["benchmarks/ensemble_overopt.py"],
    ["benchmarks/overopt_law.py"],
    ["benchmarks/iterate_budget.py"],
    ["benchmarks/cai_lab.py", "--findings", "docs/FINDINGS.md"],  # Constitutional AI on the lab (about half an hour)
]


def versions() -> str:
    import torch
    import transformers

    try:
        import trl

        trl_v = trl.__version__
    except ImportError:
        trl_v = "not installed"
    return f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, trl {trl_v}"


def main() -> None:
    lines = ["# Latest benchmark run", "", f"- machine: {platform.machine()}, {platform.processor() or 'cpu'}",
             f"- versions: {versions()}", f"- date: {time.strftime('%Y-%m-%d %H:%M')}", ""]
    for cmd in COMMANDS:
        full = [sys.executable, *cmd]
        print("$", shlex.join(cmd), flush=True)
        t = time.time()
        res = subprocess.run(full, cwd=ROOT, capture_output=True, text=True)
        tail = "\n".join((res.stdout or "").strip().splitlines()[-40:])
        print(tail)
        lines += [f"## `python {shlex.join(cmd)}`", "", f"exit {res.returncode}, {time.time() - t:.0f} s", "", "```", tail, "```", ""]
    out = ROOT / "docs" / "BENCHMARKS_LATEST.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
