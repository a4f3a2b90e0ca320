"""The reward-KL frontier on the lab: DPO vs PPO vs best-of-n, from one SFT model and one set of
comparisons (the DPO paper's controlled-sentiment experiment, Rafailov et al. 2023 §6.1 / Fig. 2
left, at our scale).

    SFT      lab base -> `sft` on the lab demonstrations                           (the start)
    data     K responses per training prompt from SFT, ranked by the simulated annotator
    DPO      beta in {0.05, 0.1, 0.5} on those comparisons; a checkpoint every --eval-every steps
    RM       Bradley-Terry reward model on the same comparisons
    PPO-GT   PPO with the gold judge as reward; PPO-RM: PPO with the RM (rlhfkit.recipes.ppo)
    BoN      best of n in {1, 4, 16, 64} SFT samples, chosen by gold (oracle) and by the RM

Every policy point is measured the same way: one sample per held-out prompt (same prompts, same
seed, temperature 1), gold/mean of prompt + response, and the sequence KL from the SFT model,
sum_t log pi/pi_sft over the sampled tokens (`evaluate.sequence_kl`, nats). Best-of-n uses its
analytic KL, log n - (n-1)/n. Stages are cached in --out, so a rerun only does what is missing.

Run: `.venv/bin/python benchmarks/frontier.py --out runs/frontier` (writes frontier.json,
frontier.md and frontier.png there).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time
from pathlib import Path

import torch


def log(msg: str) -> None:
    print(f"[frontier {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- stages


def train_sft(out: Path, args) -> Path:
    from rlhfkit.config import load_config
    from rlhfkit.recipes import sft

    final = out / "sft" / "final"
    if not (final / "run_complete.json").exists():
        log("SFT")
        cfg = load_config(sft.SFTConfig, None, [*args.sft_set, "log.progress=false", "log.save_every=0"])
        sft.run(cfg, out / "sft")
    return final


def collect_comparisons(out: Path, sft_dir: Path, args) -> Path:
    from rlhfkit.config import load_config
    from rlhfkit.jobs import compare

    path = out / "compare" / "comparisons.jsonl"
    if not path.exists():
        log(f"comparisons: {args.k} samples for {args.train_prompts} prompts, simulated annotator")
        cfg = load_config(compare.CompareConfig, None, [
            f"policy.name_or_path={sft_dir}", f"limit={args.train_prompts}", f"k={args.k}",
            f"sampling.max_new_tokens={args.max_new_tokens}", "seed=0"])
        compare.run(cfg, out / "compare")
    return path


def train_dpo(out: Path, sft_dir: Path, data: Path, beta: float, args) -> Path:
    from rlhfkit.config import load_config
    from rlhfkit.recipes import dpo

    run_dir = out / f"dpo_beta{beta}"
    if not (run_dir / "final" / "run_complete.json").exists():
        log(f"DPO beta={beta}")
        cfg = load_config(dpo.DPOConfig, None, [
            f"model.name_or_path={sft_dir}", f"data.train={data}", f"beta={beta}", f"train.max_steps={args.dpo_steps}",
            f"train.lr={args.dpo_lr}", "train.batch_size=32", "train.micro_batch_size=32", "train.schedule=constant",
            "train.warmup_ratio=0.1", f"log.save_every={args.eval_every}", "log.keep_checkpoints=1000",
            "log.eval_every=0", "sampling.prompts=null", "sampling.text=null", "log.progress=false"])
        dpo.run(cfg, run_dir)
    return run_dir


def train_rm(out: Path, sft_dir: Path, data: Path, args) -> Path | None:
    if importlib.util.find_spec("rlhfkit.recipes.reward") is None:
        return None
    from rlhfkit.config import load_config
    from rlhfkit.recipes import reward

    final = out / "rm" / "final"
    if not (final / "run_complete.json").exists():
        log("reward model")
        cfg = load_config(reward.RewardConfig, None, [
            f"model.name_or_path={sft_dir}", f"data.train={data}", "log.progress=false", "log.save_every=0",
            *args.rm_set])
        reward.run(cfg, out / "rm")
    return final


def train_ppo(out: Path, name: str, sft_dir: Path, reward_source: str, args) -> Path:
    from rlhfkit.config import load_config
    from rlhfkit.recipes import ppo

    run_dir = out / name
    if not (run_dir / "final" / "run_complete.json").exists():
        log(f"{name}: reward {reward_source}")
        cfg = load_config(ppo.PPOConfig, None, [
            f"model.name_or_path={sft_dir}", f"reward.source={reward_source}", f"train.max_steps={args.ppo_steps}",
            f"rollout.max_new_tokens={args.max_new_tokens}", f"log.save_every={args.ppo_eval_every}",
            "log.keep_checkpoints=1000", "log.eval_every=0", "eval.text=null", "log.progress=false", *args.ppo_set])
        ppo.run(cfg, run_dir)
    return run_dir


# ----------------------------------------------------------------------------- measuring


class Evaluator:
    """gold/mean and sequence KL from the SFT model, the same prompts and seed for every policy."""

    def __init__(self, sft_dir: Path, args):
        from rlhfkit.config import ModelConfig
        from rlhfkit.data import encode_prompt, read_records
        from rlhfkit.models.loading import load_policy, load_tokenizer

        self.cfg = ModelConfig(name_or_path=str(sft_dir))
        self.tokenizer = load_tokenizer(self.cfg)
        self.ref = load_policy(self.cfg).eval()
        records = read_records("lab:prompts_eval", "prompt")
        records = [records[i % len(records)] for i in range(args.eval_samples)]
        self.texts = [r.prompt for r in records]
        self.ids = [encode_prompt(self.tokenizer, r) for r in records]
        self.max_new_tokens = args.max_new_tokens

    def __call__(self, model_dir: Path) -> dict[str, float]:
        from rlhfkit.evaluate import sequence_kl
        from rlhfkit.lab import gold_score
        from rlhfkit.models.loading import load_policy
        from rlhfkit.rollout import SamplingParams, generate

        policy = load_policy(self.cfg, path=str(model_dir)).eval()
        samples = generate(policy, self.tokenizer, self.ids, SamplingParams(max_new_tokens=self.max_new_tokens),
                           batch_size=128, generator_seed=1234)
        gold = gold_score([t + s.text for t, s in zip(self.texts, samples, strict=True)])
        kl = sequence_kl(policy, self.ref, self.ids, [s.response_ids for s in samples])
        n = len(samples)
        return {"gold": sum(gold) / n, "gold_se": _se(gold), "kl": kl,
                "length": sum(len(s.response_ids) for s in samples) / n, "eos_rate": sum(s.finished for s in samples) / n}


def _se(xs: list[float]) -> float:
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / max(len(xs) - 1, 1) / len(xs))


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, policy folder) of every saved checkpoint, then the final model."""
    found = []
    for c in (run_dir / "checkpoints").glob("step-*"):
        found.append((int(c.name.split("-")[1]), c / "policy"))
    final = json.loads((run_dir / "final" / "run_complete.json").read_text())
    found.append((int(final.get("steps", 10**9)), run_dir / "final"))
    return sorted(found)


def run_points(evaluate, run_dir: Path, method: str, cache: dict) -> list[dict]:
    points = []
    for step, folder in checkpoints(run_dir):
        key = f"{method}@{step}"
        if key not in cache:
            cache[key] = {"method": method, "step": step, **evaluate(folder)}
            log(f"{key}: gold {cache[key]['gold']:.3f}  kl {cache[key]['kl']:.2f}")
        points.append(cache[key])
    return points


def best_of_n_points(evaluate: Evaluator, sft_dir: Path, rm_dir: Path | None, ns: list[int]) -> list[dict]:
    """One set of max(ns) samples per prompt from SFT; best-of-n for every n from disjoint groups."""
    from rlhfkit.jobs.best_of_n import best_in_groups, best_of_n_kl
    from rlhfkit.lab import gold_score
    from rlhfkit.models.loading import load_policy
    from rlhfkit.rewards import build_reward
    from rlhfkit.rollout import SamplingParams, generate

    big = max(ns)
    log(f"best-of-n: {big} samples x {len(evaluate.ids)} prompts")
    policy = load_policy(evaluate.cfg, path=str(sft_dir)).eval()
    ids = [p for p in evaluate.ids for _ in range(big)]
    texts = [t for t in evaluate.texts for _ in range(big)]
    samples = generate(policy, evaluate.tokenizer, ids, SamplingParams(max_new_tokens=evaluate.max_new_tokens),
                       batch_size=256, generator_seed=4321)
    responses = [s.text for s in samples]
    shape = (len(evaluate.ids), big)
    gold = torch.tensor(gold_score([t + r for t, r in zip(texts, responses, strict=True)])).view(shape)
    scorers = {"BoN-gold": gold}
    if rm_dir is not None:
        rm = build_reward(str(rm_dir))
        scorers["BoN-RM"] = rm(texts, responses, ids, [s.response_ids for s in samples]).rewards.view(shape)
    points = []
    for method, rewards in scorers.items():
        for n in ns:
            g = best_in_groups(rewards, n, gold)
            points.append({"method": method, "n": n, "gold": g.mean().item(), "gold_se": _se(g.tolist()),
                           "kl": best_of_n_kl(n)})
            log(f"{method} n={n}: gold {points[-1]['gold']:.3f}  kl {points[-1]['kl']:.2f}")
    return points


# ----------------------------------------------------------------------------- report


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = list(dict.fromkeys(p["method"] for p in points))
    for m in methods:
        ps = sorted((p for p in points if p["method"] == m), key=lambda p: p.get("step", p.get("n", 0)))
        style = "s--" if m.startswith("BoN") else ("^-" if m.startswith("PPO") else "o-")
        ax.errorbar([p["kl"] for p in ps], [p["gold"] for p in ps], yerr=[p["gold_se"] for p in ps], fmt=style,
                    ms=4, capsize=2, label=m)
    ax.set_xscale("symlog", linthresh=1.0)  # linear below 1 nat, where most points are; log beyond
    ax.set_xlabel("sequence KL(pi || pi_SFT), nats (symlog)")
    ax.set_ylabel("gold reward (mean over held-out prompts)")
    ax.set_title("lab reward-KL frontier")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(points: list[dict], sft: dict, missing: list[str]) -> str:
    lines = ["| method | step / n | KL (nats) | gold mean | ± s.e. |", "|---|---|---|---|---|",
             f"| SFT (start) | - | 0.00 | {sft['gold']:.3f} | {sft['gold_se']:.3f} |"]
    for p in points:
        where = f"n={p['n']}" if "n" in p else f"step {p['step']}"
        lines.append(f"| {p['method']} | {where} | {p['kl']:.2f} | {p['gold']:.3f} | {p['gold_se']:.3f} |")
    for m in missing:
        lines.append(f"| {m} | not run | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/frontier")
    p.add_argument("--train-prompts", type=int, default=1024, help="prompts with K-wise comparisons")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--eval-samples", type=int, default=320, help="samples per evaluation (held-out prompts cycled)")
    p.add_argument("--betas", type=float, nargs="+", default=[0.05, 0.1, 0.5])
    p.add_argument("--dpo-steps", type=int, default=120)
    p.add_argument("--dpo-lr", type=float, default=1e-4)
    p.add_argument("--eval-every", type=int, default=20, help="DPO checkpoint (frontier point) every N steps")
    p.add_argument("--ppo-steps", type=int, default=60)
    p.add_argument("--ppo-eval-every", type=int, default=15)
    p.add_argument("--ns", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--sft-set", nargs="*", default=["train.lr=1e-3"], help="SFT config overrides key=value")
    p.add_argument("--rm-set", nargs="*", default=[], help="extra reward-model config overrides")
    p.add_argument("--ppo-set", nargs="*", default=["train.lr=5e-5"], help="PPO config overrides key=value")
    p.add_argument("--skip", nargs="*", default=[], choices=["dpo", "ppo", "bon", "rm"], help="stages to leave out")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_path = out / "points_cache.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}

    from rlhfkit.lab import ensure_lab

    ensure_lab()
    t0 = time.time()
    sft_dir = train_sft(out, args)
    data = collect_comparisons(out, sft_dir, args)
    evaluate = Evaluator(sft_dir, args)
    if "sft" not in cache:
        cache["sft"] = evaluate(sft_dir)
    sft_point = cache["sft"]
    log(f"SFT: gold {sft_point['gold']:.3f}  kl {sft_point['kl']:.3f} (0 by construction)")

    points, missing = [], []
    if "dpo" not in args.skip:
        for beta in args.betas:
            points += run_points(evaluate, train_dpo(out, sft_dir, data, beta, args), f"DPO beta={beta}", cache)
            cache_path.write_text(json.dumps(cache, indent=2))
    rm_dir = train_rm(out, sft_dir, data, args) if "rm" not in args.skip else None
    if "ppo" in args.skip:
        missing += ["PPO-GT", "PPO-RM"]
    elif importlib.util.find_spec("rlhfkit.recipes.ppo") is None:
        log("rlhfkit.recipes.ppo is missing: PPO points NOT produced")
        missing += ["PPO-GT (rlhfkit.recipes.ppo missing)", "PPO-RM (rlhfkit.recipes.ppo missing)"]
    else:
        points += run_points(evaluate, train_ppo(out, "ppo_gt", sft_dir, "lab:gold", args), "PPO-GT", cache)
        cache_path.write_text(json.dumps(cache, indent=2))
        if rm_dir is None:
            missing.append("PPO-RM (no reward model)")
        else:
            points += run_points(evaluate, train_ppo(out, "ppo_rm", sft_dir, str(rm_dir), args), "PPO-RM", cache)
    if "bon" not in args.skip:
        if "bon" not in cache:
            cache["bon"] = best_of_n_points(evaluate, sft_dir, rm_dir, args.ns)
        points += cache["bon"]
    cache_path.write_text(json.dumps(cache, indent=2))

    plot([{"method": "SFT", "step": 0, **sft_point}, *points], out / "frontier.png")
    md = table(points, sft_point, missing)
    (out / "frontier.md").write_text(md)
    (out / "frontier.json").write_text(json.dumps({"sft": sft_point, "points": points, "missing": missing,
                                                   "args": vars(args), "seconds": round(time.time() - t0)}, indent=2))
    print(md)
    log(f"wrote {out / 'frontier.png'}, frontier.md, frontier.json")


if __name__ == "__main__":
    main()
