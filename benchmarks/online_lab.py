"""PPO, GRPO, Dr. GRPO, RLOO and REINFORCE++ on the lab, side by side at an equal number of episodes.

    .venv/bin/python benchmarks/online_lab.py                       # every method x reward x seed (docs/BENCHMARKS.md)
    .venv/bin/python benchmarks/online_lab.py --rewards gold --seeds 0 1 2 --steps 30
    .venv/bin/python benchmarks/online_lab.py --quick               # a smoke run
    .venv/bin/python benchmarks/online_lab.py --report              # table + plot of the runs done so far

All methods start from the same lab SFT model (benchmarks/ppo_lab.py `exp_sft`), use the same
episodes per step (train.batch_size responses), steps, lr, KL coefficient, updates per batch and
response length; they differ only in what the method is: the advantage estimator, where the KL goes
(the reward for PPO/RLOO/REINFORCE++, the loss for the GRPO family) and the group size G (PPO and
REINFORCE++ 1 sample per prompt; GRPO and Dr. GRPO 8; RLOO 4). Rewards: the lab's gold judge
(`lab:gold`) and a learned RM (`ppo_lab.learned_rm`: K=4 comparisons of SFT samples ranked by the
simulated annotator). Each run is its own subprocess (peak RSS = its ru_maxrss; one torch thread).
Held-out numbers: gold, KL to the SFT model and length on 128 lab eval prompts, sampled the same way
for every model (evaluate.heldout_metrics). Each run keeps its numbers in WORKDIR/<method>_<reward>_s<seed>/
result.json, so a rerun (more seeds, or one cut short) does only what is missing. Writes
WORKDIR/online_lab.json and a markdown table + a gold-vs-KL plot (docs/online_lab.png) for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
METHODS = {  # verb, overrides: the method and nothing else
    "ppo": ("ppo", []),
    "grpo": ("grpo", ["rollout.group_size=8", "algo.estimator=grpo"]),
    "dr_grpo": ("grpo", ["rollout.group_size=8", "algo.estimator=dr_grpo"]),
    "rloo": ("rloo", ["rollout.group_size=4", "algo.estimator=rloo"]),
    "reinforce_pp": ("rloo", ["rollout.group_size=1", "algo.estimator=reinforce_pp", "algo.loss_aggregation=token_mean"]),
}


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(spec: dict) -> None:
    """One run in this process: train, evaluate, print a JSON line with the numbers."""
    import torch

    torch.set_num_threads(1)
    from rlhfkit.config import ModelConfig, load_config
    from rlhfkit.evaluate import heldout_metrics
    from rlhfkit.recipes.online import RolloutConfig
    from rlhfkit.train.run_dir import read_metrics
    from rlhfkit.verbs import VERBS, config_class

    verb = VERBS[spec["verb"]]
    out = Path(spec["out"])
    cfg = load_config(config_class(verb), None, spec["overrides"])
    t0, cpu0 = time.time(), _cpu_seconds()
    if not (out / "final" / "run_complete.json").exists():
        __import__(verb.module, fromlist=["run"]).run(cfg, out)
    seconds, cpu = time.time() - t0, _cpu_seconds() - cpu0  # cpu: this process's, so other jobs do not count
    rows = read_metrics(out / "metrics.jsonl", spec["verb"])
    m = heldout_metrics(str(out / "final"), ModelConfig(name_or_path=spec["sft"]), "lab:prompts_eval", 128,
                        RolloutConfig(max_new_tokens=spec["new_tokens"]))
    step_s = [r["time/step_s"] for r in rows if "time/step_s" in r]
    print(json.dumps({"gold": m["gold/mean"], "kl": m["eval/kl"], "length": m["eval/response_length"],
                      "s_per_episode": sum(step_s) / (len(step_s) * spec["batch"]) if step_s else None,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "cpu_s_per_episode": cpu / (len(step_s) * spec["batch"]) if step_s else None,
                      "train_seconds": round(seconds, 1), "final_proxy": rows[-1].get("reward/mean") if rows else None}))


def run_one(args, method: str, reward: str, sft: str, seed: int, out: Path) -> dict:
    """One method x reward x seed in a subprocess; its numbers are kept in OUT/result.json, so a
    rerun of the benchmark with more seeds only runs what is missing."""
    done = out / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    verb, extra = METHODS[method]
    key = "ppo" if verb == "ppo" else "algo"
    overrides = [f"model.name_or_path={sft}", f"reward.source={reward}", "eval.text=null", "eval.gold=lab",
                 "log.progress=false", "log.save_every=0", f"train.seed={seed}", f"train.max_steps={args.steps}",
                 f"train.batch_size={args.batch}", "train.micro_batch_size=32", f"train.lr={args.lr}",
                 f"rollout.max_new_tokens={args.new_tokens}", f"{key}.kl_coef={args.beta}",
                 f"{key}.ppo_epochs={args.epochs}", *extra]
    spec = {"verb": verb, "out": str(out), "overrides": overrides, "sft": sft, "new_tokens": args.new_tokens,
            "batch": args.batch}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          check=True)
    row = json.loads(proc.stdout.strip().split("\n")[-1])
    done.write_text(json.dumps(row))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/online_lab")
    p.add_argument("--methods", nargs="*", default=list(METHODS))
    p.add_argument("--rewards", nargs="*", default=["gold", "rm"], choices=["gold", "rm"])
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=20, help="steps of --batch episodes, every method")
    p.add_argument("--batch", type=int, default=64, help="episodes (responses) per step, every method")
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--beta", type=float, default=0.05)
    p.add_argument("--epochs", type=int, default=4, help="policy updates per rollout batch, every method")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--quick", action="store_true", help="2 steps, 1 seed, gold only")
    p.add_argument("--report", action="store_true", help="run nothing: tabulate and plot the runs already done")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.quick:
        args.steps, args.seeds, args.rewards = 2, [0], ["gold"]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    import ppo_lab  # the SFT model and the learned RM every experiment shares

    lab_args = argparse.Namespace(workdir=str(work), sft_set=[], new_tokens=args.new_tokens, eval_examples=128,
                                  labels=1024, rm_set=["train.epochs=2.0", "train.lr=3e-4"], sft=None)
    sft = ppo_lab.exp_sft(lab_args)
    # The RM is built only to train against it: --report reads finished runs (result.json) only.
    rewards = {"gold": "lab:gold", "rm": ppo_lab.learned_rm(lab_args) if "rm" in args.rewards and not args.report else None}
    results = {"settings": vars(args) | {"sft": sft}, "runs": []}
    # Seed-major: a run cut short by the clock still leaves every method x reward at the same seeds.
    for seed in args.seeds:
        for reward in args.rewards:
            for method in args.methods:
                out = work / f"{method}_{reward}_s{seed}"
                if args.report and not (out / "result.json").exists():
                    continue
                results["runs"].append({"method": method, "reward": reward, "seed": seed,
                                        **run_one(args, method, rewards[reward], sft["path"], seed, out)})
                print(json.dumps(results["runs"][-1]), flush=True)
                (work / "online_lab.json").write_text(json.dumps(results, indent=2))
    print(table(results, sft))
    plot(results, sft, HERE.parent / "docs" / "online_lab.png")


def _seeds(xs: list[float], digits: int = 3) -> str:
    """Mean, then each seed's value: with 2-3 seeds an interval of the mean would say little."""
    each = ", ".join(f"{x:.{digits}f}" for x in xs)
    return f"{statistics.mean(xs):.{digits}f}" + (f" ({each})" if len(xs) > 1 else "")


def _median(rs: list[dict], key: str, digits: int) -> str:
    xs = [r[key] for r in rs if r.get(key) is not None]
    return f"{statistics.median(xs):.{digits}f}" if xs else "n/a"


def table(results: dict, sft: dict) -> str:
    h = sft["heldout"]
    lines = [f"SFT start: gold {h['gold/mean']:.3f}, length {h['eval/response_length']:.1f}", "",
             "| method | reward | gold (held-out), mean (seeds) | KL to SFT | length | CPU s / episode | wall s / episode "
             "| peak RSS MB | seeds |", "|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list] = {}
    for r in results["runs"]:
        groups.setdefault((r["reward"], r["method"]), []).append(r)
    for (reward, method), rs in groups.items():
        lines.append(f"| {method} | {reward} | {_seeds([r['gold'] for r in rs])} | {_seeds([r['kl'] for r in rs], 2)} | "
                     f"{statistics.mean(r['length'] for r in rs):.1f} | {_median(rs, 'cpu_s_per_episode', 3)} | "
                     f"{_median(rs, 's_per_episode', 3)} | {_median(rs, 'peak_rss_mb', 0)} | {len(rs)} |")
    return "\n".join(lines)


def plot(results: dict, sft: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, method in enumerate(METHODS):
        for reward, marker in (("gold", "o"), ("rm", "^")):
            rs = [r for r in results["runs"] if r["method"] == method and r["reward"] == reward]
            if rs:
                ax.scatter([r["kl"] for r in rs], [r["gold"] for r in rs], color=f"C{i}", marker=marker,
                           label=f"{method} ({reward})")
    ax.scatter([0], [sft["heldout"]["gold/mean"]], color="k", marker="*", s=80, label="SFT (start)")
    st = results["settings"]
    ax.set_title(f"{st['steps']} steps x {st['batch']} episodes, lr {st['lr']:g}, beta {st['beta']:g}; "
                 "o = lab:gold, ^ = learned RM", fontsize=8)
    ax.set_xlim(left=-0.01)
    ax.set_xlabel("KL to SFT (nats / response, held-out)")
    ax.set_ylabel("gold (held-out)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
