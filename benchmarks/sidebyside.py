"""Running trainers side by side (benchmarks/ppo.py, grpo.py, rloo.py): each run in its own
subprocess (so peak RSS is per run), the sides interleaved A B A B ... so that load on a shared
machine hits every side alike, steady-state rates from per-step timestamps, medians and spread.

A child is the benchmark file itself run as `FILE --child NAME PAYLOAD`; it prints one line
`RESULT {json}` with `step_end_s` / `step_end_cpu_s` (wall and process CPU time at the end of
every optimizer step). A side may run rlhfkit from another source tree (`src`, put first on
PYTHONPATH: e.g. `git archive <commit> | tar -x -C DIR`), which is how before/after pairs are
measured back to back in one run.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Side:
    name: str  # as printed: "rlhfkit", "rlhfkit@base", "trl"
    child: str  # which child function of the benchmark file runs it
    python: str = sys.executable
    src: str | None = None  # a source tree put first on PYTHONPATH (rlhfkit from another commit)


def child_main(children: dict[str, Callable[[dict, object], dict]]) -> None:
    """`FILE --child NAME PAYLOAD`: run children[NAME](workspace, args), print its RESULT line."""
    import argparse

    data = json.loads(sys.argv[3])
    result = children[sys.argv[2]](data["ws"], argparse.Namespace(**data["args"]))
    import torch
    import transformers

    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import trl

        result["versions"]["trl"] = trl.__version__
    except ImportError:  # pragma: no cover
        pass
    print("RESULT " + json.dumps(result))


def run_child(script: Path, side: Side, ws: dict, args, episodes_per_step: int) -> dict:
    """One run of `side` in a subprocess; adds steady-state episodes/s in wall and CPU time: the
    episodes of steps 2..N over the time from the end of step 1 to the end of step N (step 1 is
    allocator and kernel warm-up for both), and the load average around the run."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", RLHFKIT_PROGRESS="0", OMP_NUM_THREADS=str(args.threads))
    if side.src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(side.src).resolve()), env.get("PYTHONPATH")]))
    load0 = os.getloadavg()[0]
    payload = json.dumps({"ws": ws, "args": vars(args)})
    proc = subprocess.run([side.python, str(script), "--child", side.child, payload], capture_output=True, text=True,
                          env=env)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"[bench] {side.name} failed (exit {proc.returncode})")
    res = json.loads(lines[-1][len("RESULT "):])
    ends, cpu = res["step_end_s"], res["step_end_cpu_s"]
    res["steady_episodes_per_s"] = episodes_per_step * (len(ends) - 1) / (ends[-1] - ends[0])
    res["steady_episodes_per_cpu_s"] = episodes_per_step * (len(cpu) - 1) / (cpu[-1] - cpu[0])
    res["load_average"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    return res


def interleave(script: Path, sides: list[Side], ws: dict, args, episodes_per_step: int) -> dict[str, list[dict]]:
    """args.repeats runs of every side, alternating, each printed as it ends."""
    runs: dict[str, list[dict]] = {s.name: [] for s in sides}
    for rep in range(args.repeats):
        for side in sides:
            t = time.time()
            runs[side.name].append(run_child(script, side, ws, args, episodes_per_step))
            r = runs[side.name][-1]
            print(f"[bench] repeat {rep + 1}/{args.repeats} {side.name}: {r['steady_episodes_per_s']:.2f} episodes/s, "
                  f"{r['steady_episodes_per_cpu_s']:.2f} episodes/CPU-s, load {r['load_average']}, "
                  f"{time.time() - t:.0f} s", flush=True)
    return runs


PARTS = ("generate", "reward", "passes", "update")  # rlhfkit's time/<part>_s metrics (recipes/online.py)


def time_parts(rows: list[dict]) -> dict[str, list[float]]:
    """rlhfkit metrics rows -> {part: seconds per step}, for the parts this tree logs (+ step)."""
    keys = [k for k in PARTS if f"time/{k}_s" in rows[0]] + ["step"]
    return {k: [r[f"time/{k}_s"] for r in rows] for k in keys}


def breakdown(rs: list[dict]) -> dict[str, float] | None:
    """Seconds per step of each part, mean over steps 2..N, median over runs; None without parts."""
    if not rs or "time_parts" not in rs[0] or len(rs[0]["time_parts"]) < 2:
        return None
    per_run = [{k: sum(v[1:]) / max(len(v) - 1, 1) for k, v in r["time_parts"].items()} for r in rs]
    for m in per_run:  # within a run, so never negative (medians of the parts need not add up to the step's)
        m["other"] = m["step"] - sum(v for k, v in m.items() if k != "step")
    return {k: median([m[k] for m in per_run]) for k in per_run[0]}


def median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def summarize(title: str, runs: dict[str, list[dict]], reference: str = "trl") -> dict:
    """Medians (with every run) of each side, peak RSS (max over runs), and each side's ratio of
    medians to `reference`; printed as a table and returned."""
    results = {}
    for name, rs in runs.items():
        results[name] = {**rs[-1], "episodes_per_s_runs": [r["steady_episodes_per_s"] for r in rs],
                         "episodes_per_cpu_s_runs": [r["steady_episodes_per_cpu_s"] for r in rs],
                         "steady_episodes_per_s": median([r["steady_episodes_per_s"] for r in rs]),
                         "steady_episodes_per_cpu_s": median([r["steady_episodes_per_cpu_s"] for r in rs]),
                         "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                         "load_average_runs": [r["load_average"] for r in rs]}
    print(f"\n{title}")
    print(f"{'':13s} {'episodes/s':>10s} {'(runs)':>24s} {'episodes/CPU-s':>15s} {'(runs)':>24s} {'peak RSS MB':>11s}")
    for name, r in results.items():
        wall = ", ".join(f"{x:.2f}" for x in r["episodes_per_s_runs"])
        cpu = ", ".join(f"{x:.2f}" for x in r["episodes_per_cpu_s_runs"])
        print(f"{name:13s} {r['steady_episodes_per_s']:10.2f} {wall:>24s} {r['steady_episodes_per_cpu_s']:15.2f} "
              f"{cpu:>24s} {r['peak_rss_mb']:11.0f}")
    for name, r in results.items():
        print(f"  {name}: {r['versions']}, load average before/after each run: {r['load_average_runs']}")
    for name, rs in runs.items():
        if (parts := breakdown(rs)) is not None:
            results[name]["step_breakdown_s"] = parts
            print(f"  {name} step time (wall, mean of steps 2..N, median of runs): " + ", ".join(
                f"{k} {v:.3f} s ({100 * v / parts['step']:.0f}%)" for k, v in parts.items() if k != "step")
                  + f"; step {parts['step']:.3f} s")
    if reference in results:
        for name in list(runs):
            if name == reference:
                continue
            for key, label in (("steady_episodes_per_s", "episodes/s"), ("steady_episodes_per_cpu_s", "episodes/CPU-s")):
                ratio = results[name][key] / results[reference][key]
                results[f"ratio_{name}_over_{reference}_{key}"] = ratio
                print(f"ratio {name} / {reference} {label} (medians): {ratio:.2f}x")
    return results


def sides(args, trl_python: Callable[[], str] = lambda: sys.executable) -> list[Side]:
    """The sides a benchmark's options ask for: rlhfkit, rlhfkit@base (with --baseline-src) and trl
    (its python from `trl_python`, called only when trl runs); --only keeps rlhfkit's or trl's."""
    out = []
    if args.only != "trl":
        out.append(Side("rlhfkit", "rlhfkit"))
        if args.baseline_src:
            out.append(Side("rlhfkit@base", "rlhfkit", src=args.baseline_src))
    if args.only != "rlhfkit":
        out.append(Side("trl", "trl", python=trl_python()))
    return out


def compare(script: Path, sides: list[Side], ws: dict, args, title: str, setup: dict) -> dict:
    """ppo.py's and grpo.py's (rloo.py's) parent: the sides interleaved (args.batch episodes a step),
    the summary printed under `title`, and written with `setup` to args.out when given."""
    runs = interleave(script, sides, ws, args, args.batch)
    summary = summarize(title, runs)
    write_json(args.out, {"setup": setup, **summary})
    return summary


def write_json(path: str | None, summary: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(summary, indent=2))
