"""PPO and iterative RLHF on the lab: the experiments of issue 4, each a few minutes on 2 cores.

    .venv/bin/python benchmarks/ppo_lab.py                 # all experiments
    .venv/bin/python benchmarks/ppo_lab.py --exp gt rm     # some of them
    .venv/bin/python benchmarks/ppo_lab.py --quick         # fewer steps (smoke run)

Experiments (runs under --workdir, default runs/ppo_lab; a summary in summary.json):
  sft       the lab SFT model every experiment starts from (rlhfkit.recipes.sft on lab defaults)
  gt        PPO-GT: reward = the lab gold judge; gold vs KL over training
  rm        a learned RM (K=4 comparisons of SFT samples, simulated annotator), then PPO against
            it with beta = 0 and with a tuned beta: proxy reward and gold over training
  adaptive  adaptive beta with target T: measured KL vs T after warm-up (+-20% band)
  iterate   iterative RLHF, 3 rounds vs 1 round at the same label budget and PPO steps

Held-out numbers (gold, KL to SFT, length) come from sampling the final policy on the lab's
eval prompts with a fixed seed, the same way for every model, so they compare directly.
The defaults are the settings of the numbers reported for issue 4 (threads=1; PPO-GT at lr 5e-5,
beta 0.05, 40 steps; RM: 1024 K=4 comparisons, 2 epochs at lr 3e-4, PPO 40 steps at lr 1e-4 with
beta 0 and 0.1; adaptive: T=1 nat, beta0 0.2, horizon 1000 episodes, 50 steps, warm-up 30;
iterate: 768 labels, 30 PPO steps at batch 32 in total, beta 0.05). Stages already finished in
--workdir are reused, so a rerun only does what is missing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from rlhfkit.config import load_config
from rlhfkit.train.run_dir import read_metrics


def _ppo_overrides(args, *extra: str) -> list[str]:
    return [
        f"model.name_or_path={args.sft}", "log.progress=false", "log.save_every=0", f"log.eval_every={args.steps}",
        f"train.batch_size={args.batch}", f"train.micro_batch_size={args.micro}", f"train.max_steps={args.steps}",
        f"train.lr={args.lr}", f"rollout.max_new_tokens={args.new_tokens}", "eval.examples=64", *extra,
    ]


def run_ppo(args, name: str, *overrides: str) -> dict:
    from rlhfkit.recipes.ppo import PPOConfig, run

    out = Path(args.workdir) / name
    cfg = load_config(PPOConfig, None, _ppo_overrides(args, *overrides))
    t0 = time.time()
    if not (out / "final" / "run_complete.json").exists():
        run(cfg, out)
    rows = read_metrics(out / "metrics.jsonl", "ppo")
    keep = ("reward/mean", "gold/mean", "kl/mean", "kl/beta", "response/length", "eval/perplexity")
    curve = [{"step": r["step"], **{k: round(r[k], 4) for k in keep if k in r}} for r in rows]
    return {"curve": curve, "heldout": heldout(args, str(out / "final")), "seconds": round(time.time() - t0, 1)}


def heldout(args, policy_path: str) -> dict:
    """Gold, sequence KL to the SFT model, length and EOS rate on the lab eval prompts."""
    from rlhfkit.config import ModelConfig
    from rlhfkit.evaluate import heldout_metrics
    from rlhfkit.recipes.ppo import PPORolloutConfig

    m = heldout_metrics(policy_path, ModelConfig(name_or_path=args.sft), "lab:prompts_eval", args.eval_examples,
                        PPORolloutConfig(max_new_tokens=args.new_tokens))
    return {k: round(v, 4) for k, v in m.items()}


def exp_sft(args) -> dict:
    from rlhfkit.recipes.sft import SFTConfig, run

    out = Path(args.workdir) / "sft"
    t0 = time.time()
    if not (out / "final" / "run_complete.json").exists():
        run(load_config(SFTConfig, None, ["log.progress=false", *args.sft_set]), out)
    args.sft = str(out / "final")
    return {"path": args.sft, "heldout": heldout(args, args.sft), "seconds": round(time.time() - t0, 1)}


def exp_gt(args) -> dict:
    return run_ppo(args, "ppo_gt", "reward.source=lab:gold", f"ppo.kl_coef={args.beta}", f"train.lr={args.gt_lr}")


def learned_rm(args) -> str:
    """Comparisons of SFT samples ranked by the simulated annotator, then a Bradley-Terry RM."""
    from rlhfkit.jobs.compare import CompareConfig
    from rlhfkit.jobs.compare import run as compare
    from rlhfkit.recipes.reward import RewardConfig
    from rlhfkit.recipes.reward import run as reward

    root = Path(args.workdir) / "rm"
    data = root / "comparisons.jsonl"
    if not data.exists():
        compare(load_config(CompareConfig, None, [f"policy.name_or_path={args.sft}", f"limit={args.labels}", "k=4",
                                                  f"sampling.max_new_tokens={args.new_tokens}"]), data)
    final = root / "model" / "final"
    if not (final / "run_complete.json").exists():
        reward(load_config(RewardConfig, None, [f"model.name_or_path={args.sft}", f"data.train={data}",
                                                "log.progress=false", f"normalize.policy={args.sft}",
                                                f"normalize.max_new_tokens={args.new_tokens}", *args.rm_set]), root / "model")
    return str(final)


def exp_rm(args) -> dict:
    rm = learned_rm(args)
    out = {"rm": rm, "rm_summary": json.loads((Path(rm) / "run_complete.json").read_text())}
    steps = args.rm_steps
    for beta in (0.0, args.rm_beta):
        name = f"ppo_rm_beta{beta:g}"
        out[name] = run_ppo(args, name, f"reward.source={rm}", f"ppo.kl_coef={beta}", f"train.max_steps={steps}",
                            f"log.eval_every={steps}")
    return out


def exp_adaptive(args) -> dict:
    name = f"ppo_adaptive_T{args.kl_target:g}_H{args.kl_horizon}_b{args.adaptive_beta:g}"
    res = run_ppo(args, name, "reward.source=lab:gold", f"ppo.kl_coef={args.adaptive_beta}",
                  f"ppo.kl_target={args.kl_target}", f"ppo.kl_horizon={args.kl_horizon}",
                  f"train.max_steps={args.adaptive_steps}", f"log.eval_every={args.adaptive_steps}")
    kls = [r["kl/mean"] for r in res["curve"]]
    after = kls[args.warmup :]
    lo, hi = 0.8 * args.kl_target, 1.2 * args.kl_target
    res["target"] = args.kl_target
    # Per-batch KL is noisy (64 sequences); the 5-step moving average is what a controller can hold.
    smooth = [sum(kls[max(0, i - 4) : i + 1]) / len(kls[max(0, i - 4) : i + 1]) for i in range(len(kls))][args.warmup :]
    res["after_warmup"] = {"steps": len(after), "mean_kl": round(sum(after) / max(len(after), 1), 4),
                           "share_within_20pct": round(sum(lo <= k <= hi for k in after) / max(len(after), 1), 3),
                           "share_within_20pct_5step_avg": round(sum(lo <= k <= hi for k in smooth) / max(len(smooth), 1), 3),
                           "min": round(min(after), 4) if after else None, "max": round(max(after), 4) if after else None}
    return res


def exp_iterate(args) -> dict:
    from rlhfkit.pipeline.iterate import IterateConfig, run

    out = {}
    args = argparse.Namespace(**{**vars(args), "batch": args.iterate_batch, "micro": args.iterate_batch})
    for rounds in (1, 3):
        name = f"iterate_{rounds}"
        cfg = load_config(IterateConfig, None, [
            f"policy.name_or_path={args.sft}", f"rounds={rounds}", f"label_budget={args.iterate_labels}",
            "compare.k=4", f"compare.sampling.max_new_tokens={args.new_tokens}", f"eval.examples={args.eval_examples}",
            "reward.log.progress=false", f"reward.normalize.policy={args.sft}", f"reward.normalize.max_new_tokens={args.new_tokens}",
            *[f"reward.{o}" for o in args.rm_set],
            *[f"ppo.{o}" for o in _ppo_overrides(args, "critic.init=reward", f"ppo.kl_coef={args.iterate_beta}",
                                                 f"train.max_steps={args.iterate_steps // rounds}",
                                                 f"log.eval_every={args.iterate_steps // rounds}")],
        ])
        t0 = time.time()
        run(cfg, Path(args.workdir) / name, resume=True)
        out[name] = {"rounds": read_metrics(Path(args.workdir) / name / "metrics.jsonl", "iterate"),
                     "seconds": round(time.time() - t0, 1)}
    return out


EXPERIMENTS = {"gt": exp_gt, "rm": exp_rm, "adaptive": exp_adaptive, "iterate": exp_iterate}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--exp", nargs="*", default=list(EXPERIMENTS), choices=list(EXPERIMENTS))
    p.add_argument("--workdir", default="runs/ppo_lab")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sft-set", nargs="*", default=[], help="overrides for the SFT run, e.g. train.max_steps=100")
    p.add_argument("--batch", type=int, default=64, help="episodes per PPO step")
    p.add_argument("--micro", type=int, default=32)
    p.add_argument("--steps", type=int, default=40, help="PPO-GT steps")
    p.add_argument("--lr", type=float, default=1e-4, help="policy lr (rm, adaptive, iterate)")
    p.add_argument("--gt-lr", type=float, default=5e-5, help="policy lr of PPO-GT")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--beta", type=float, default=0.05, help="beta of PPO-GT")
    p.add_argument("--labels", type=int, default=1024, help="comparisons for the learned RM")
    p.add_argument("--rm-steps", type=int, default=40, help="PPO steps against the learned RM")
    p.add_argument("--rm-beta", type=float, default=0.1, help="the non-zero beta against the learned RM")
    p.add_argument("--kl-target", type=float, default=1.0)
    p.add_argument("--kl-horizon", type=int, default=1000, help="adaptive-KL horizon in episodes")
    p.add_argument("--adaptive-beta", type=float, default=0.2, help="initial beta of the adaptive run")
    p.add_argument("--adaptive-steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=30, help="adaptive-KL steps not counted in the band check")
    p.add_argument("--iterate-labels", type=int, default=768, help="label budget of 1 round and of 3 rounds")
    p.add_argument("--iterate-steps", type=int, default=30, help="PPO steps in total over the rounds")
    p.add_argument("--iterate-batch", type=int, default=32)
    p.add_argument("--iterate-beta", type=float, default=0.05)
    p.add_argument("--eval-examples", type=int, default=128)
    p.add_argument("--rm-set", nargs="*", default=["train.epochs=2", "train.lr=3e-4"], help="overrides for the reward-model runs")
    p.add_argument("--summary", default="summary.json", help="summary file name under --workdir")
    p.add_argument("--quick", action="store_true", help="smoke run: few steps everywhere")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.rm_steps, args.adaptive_steps, args.warmup, args.labels = 3, 3, 4, 2, 120
        args.iterate_labels, args.iterate_steps = 120, 3
        args.sft_set = args.sft_set or ["train.max_steps=20"]
    torch.set_num_threads(args.threads)
    from rlhfkit.lab import ensure_lab

    ensure_lab()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    summary_path = Path(args.workdir) / args.summary
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary["sft"] = exp_sft(args)
    print(json.dumps({"sft": summary["sft"]}, indent=1), flush=True)
    for name in args.exp:
        summary[name] = EXPERIMENTS[name](args)
        summary_path.write_text(json.dumps(summary, indent=1))
        print(json.dumps({name: summary[name]}, indent=1), flush=True)
    summary_path.write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
