"""rlhfkit now vs rlhfkit from another source tree (an older commit), for the in-process side-by-side
benchmarks (benchmarks/sft.py, dpo.py, reward.py): their rlhfkit side only, the two trees
interleaved A B A B ..., each run in its own subprocess, medians of wall and process CPU time.

    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/beforeafter.py dpo --baseline-src /tmp/before --repeats 5

A run is the benchmark file's own `run_rlhfkit(model_dir, data, args)` (this tree's file: the same
settings for both sides) with the other tree's rlhfkit first on PYTHONPATH; the inputs (model
folder, data file) are built once and shared. Timed as in those files: end to end from the data
file to the trained model in memory, saving excluded (sft.py's tokens/s, dpo.py's and reward.py's
pairs/s are the same work over this time); dpo and reward also give the training-loop time from
the end of step 1 to the end of the last step. The ratio now/before of a rate = before's seconds /
now's seconds. The children never touch the lab (RLHFKIT_LAB_DIR points where nothing can be built):
sft's lab model and data are resolved here, in the parent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BENCHES = ("sft", "dpo", "reward")


def child() -> None:
    """`beforeafter.py --child BENCH PAYLOAD`: one timed run; prints `RESULT {json}`."""
    import importlib

    import torch

    bench, data = sys.argv[2], json.loads(sys.argv[3])
    args = argparse.Namespace(**data["args"])
    torch.set_num_threads(args.threads)
    module = importlib.import_module(bench)
    for name in ("rlhfkit.config", f"rlhfkit.recipes.{bench}", "rlhfkit.train.run_dir", "rlhfkit.train.session"):
        importlib.import_module(name)  # before the CPU clock starts: the wall clock starts after them too
    cpu0 = time.process_time()
    out = module.run_rlhfkit(data["model"], Path(data["data"]), args)
    cpu = time.process_time() - cpu0
    seconds, rec = out if isinstance(out, tuple) else (out, None)
    import rlhfkit

    res = {"seconds": seconds, "cpu_seconds": cpu, "rlhfkit": str(Path(rlhfkit.__file__).parent.parent)}
    if rec is not None:
        res["loop_seconds"], res["loop_steps"] = rec.loop_seconds(), len(rec.times) - 1
        res["losses"] = rec.losses
    print("RESULT " + json.dumps(res))


def run_side(bench: str, src: str | None, payload: dict, threads: int) -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", RLHFKIT_PROGRESS="0", OMP_NUM_THREADS=str(threads),
               RLHFKIT_LAB_DIR="/proc/no-lab-here", TQDM_DISABLE="1")
    if src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(src).resolve()), env.get("PYTHONPATH")]))
    load0 = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, __file__, "--child", bench, json.dumps(payload)], capture_output=True,
                          text=True, env=env)
    lines = [x for x in proc.stdout.split("\n") if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"[beforeafter] {bench} ({src or 'this tree'}) failed (exit {proc.returncode})")
    res = json.loads(lines[-1][len("RESULT "):])
    res["load_average"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    return res


def inputs(bench: str, tmp: Path, args) -> tuple[str, str]:
    """(model folder, data file) the benchmark trains on, built or resolved once for both sides."""
    from rlhfkit.data import write_jsonl

    if bench == "sft":
        from rlhfkit.lab import base_model_dir, data_file, ensure_lab

        ensure_lab()
        return str(base_model_dir()), str(data_file("sft_train"))
    import dpo
    import reward

    words = dpo.build_model(tmp / "model")
    n = args.steps * args.batch
    pairs = dpo.make_pairs(words, n) if bench == "dpo" else reward.make_pairs(words, n, seed=0)
    return str(tmp / "model"), str(write_jsonl(tmp / "pairs.jsonl", pairs))


def main() -> None:
    from sidebyside import median

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("bench", choices=BENCHES)
    p.add_argument("--baseline-src", required=True, help="source tree of the older rlhfkit")
    p.add_argument("--src", help="source tree of the newer rlhfkit (default: this tree, uncommitted edits included)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, help="default: the benchmark's (dpo 1e-4, reward 3e-4)")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write results here")
    args = p.parse_args()
    bench_args = {"steps": args.steps, "batch": args.batch, "max_length": args.max_length, "beta": args.beta,
                  "lr": args.lr or (3e-4 if args.bench == "reward" else 1e-4), "threads": args.threads}
    sides = {"now": args.src, "before": args.baseline_src}
    runs: dict[str, list[dict]] = {k: [] for k in sides}
    with tempfile.TemporaryDirectory() as tmp:
        model, data = inputs(args.bench, Path(tmp), args)
        payload = {"model": model, "data": data, "args": bench_args}
        for rep in range(args.repeats):
            for name, src in sides.items():
                r = run_side(args.bench, src, payload, args.threads)
                runs[name].append(r)
                print(f"[beforeafter] {args.bench} repeat {rep + 1}/{args.repeats} {name}: {r['seconds']:.1f} s wall, "
                      f"{r['cpu_seconds']:.1f} s CPU, load {r['load_average']} ({r['rlhfkit']})", flush=True)
    result = {"bench": args.bench, "setup": bench_args, "src": args.src, "baseline_src": args.baseline_src, "runs": runs}
    for key in ("seconds", "cpu_seconds", "loop_seconds"):
        if key in runs["now"][0]:
            now, before = (median([r[key] for r in runs[k]]) for k in ("now", "before"))
            result[f"ratio_now_over_before_{key}"] = before / now  # of rates: same work, so time before / now
            print(f"{args.bench} {key}: median now {now:.2f}, before {before:.2f}; rate ratio now/before {before / now:.3f}x "
                  f"(runs now {[round(r[key], 2) for r in runs['now']]}, before {[round(r[key], 2) for r in runs['before']]})")
    if "losses" in runs["now"][0]:
        result["max_abs_loss_diff"] = max(abs(a - b) for a, b in zip(runs["now"][0]["losses"], runs["before"][0]["losses"],
                                                                      strict=True))
        print(f"{args.bench} per-step losses now vs before: max |diff| {result['max_abs_loss_diff']:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--child":
        child()
    else:
        main()
