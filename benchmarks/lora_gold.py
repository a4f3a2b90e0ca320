"""LoRA vs full fine-tuning on the lab: held-out gold after SFT, DPO and PPO, same data and steps.

    python benchmarks/lora_gold.py [--recipes sft,dpo,ppo] [--lora-lr 5e-3]
    python benchmarks/lora_gold.py --recipes ppo --lora-targets "[c_attn, c_proj, c_fc, lm_head]"

SFT: lab:sft_train demonstrations, then the recipe-independent `evaluate_policy` on 96 held-out
prompts (seed 1234). DPO: the setup of tests/test_dpo_lab.py (160 prompts x K=4 from the base
model ranked by the simulated annotator, 24 steps of 32 pairs), gold from the recipe's own
sampling evaluation. PPO: PPO-GT (`reward.source=lab:gold`) from the lab SFT model of
benchmarks/ppo_lab.py (`--sft`, built with the SFT recipe's lab defaults when missing), the
settings of its `gt` experiment except the budget (`--ppo-steps` of `--ppo-batch` episodes, 32 new
tokens, beta 0.05); held-out gold and sequence KL to the SFT model from
`evaluate.heldout_metrics` on 128 lab eval prompts (seed 4321), as ppo_lab.py reports them. With
LoRA the reference is the adapter-off policy and the critic has its own adapters. LoRA gets a
larger learning rate (adapters start at zero and are small), the usual practice; everything else
is identical. Prints one JSON line per run and a table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from rlhfkit.config import ModelConfig, load_config

EVAL = dict(num=96, tokens=40, seed=1234)


def _gold(model_dir: str | None) -> float:
    from rlhfkit.data import read_records
    from rlhfkit.evaluate import evaluate_policy
    from rlhfkit.models.loading import load_policy, load_tokenizer
    from rlhfkit.rollout import SamplingParams

    mcfg = ModelConfig() if model_dir is None else ModelConfig(name_or_path=model_dir)
    prompts = [r.prompt for r in read_records("lab:prompts_eval", "prompt")][: EVAL["num"]]
    m, _ = evaluate_policy(load_policy(mcfg), load_tokenizer(mcfg), prompts, SamplingParams(max_new_tokens=EVAL["tokens"]),
                           gold=True, seed=EVAL["seed"])
    return m["gold/mean"]


def run_sft(work: Path, lora: bool, lr: float, steps: int, extra: list[str]) -> dict:
    from rlhfkit.recipes import sft

    sets = ["model.name_or_path=lab", "data.train=lab:sft_train", "data.eval=null", f"train.lr={lr}",
            f"train.max_steps={steps}", "train.batch_size=32", "train.micro_batch_size=32", "log.eval_every=0",
            "log.save_every=0", "log.progress=false", f"model.lora.enabled={str(lora).lower()}", *extra]
    out = sft.run(load_config(sft.SFTConfig, None, sets), work / f"sft-{int(lora)}")
    return {"gold/mean": _gold(str(out))}


def run_dpo(work: Path, lora: bool, lr: float, steps: int, extra: list[str]) -> dict:
    from rlhfkit.jobs import compare, dpo

    data = work / "comparisons.jsonl"
    if not data.exists():
        compare.run(load_config(compare.CompareConfig, None, [
            "policy.name_or_path=lab", "prompts=lab:prompts_train", "limit=160", "k=4", "sampling.max_new_tokens=40",
            "batch_size=64", "seed=0"]), data)
    sets = ["model.name_or_path=lab", f"data.train={data}", "beta=0.1", f"train.lr={lr}", f"train.max_steps={steps}",
            "train.batch_size=32", "train.micro_batch_size=32", "train.schedule=constant", "train.warmup_ratio=0.1",
            "log.eval_every=0", "log.save_every=0", "log.progress=false", "sampling.prompts=lab:prompts_eval",
            f"sampling.num_prompts={EVAL['num']}", f"sampling.max_new_tokens={EVAL['tokens']}",
            f"sampling.seed={EVAL['seed']}", "sampling.text=null", f"model.lora.enabled={str(lora).lower()}", *extra]
    dpo.run(load_config(dpo.DPOConfig, None, sets), work / f"dpo-{int(lora)}")
    last = json.loads((work / f"dpo-{int(lora)}" / "metrics.jsonl").read_text().splitlines()[-1])
    return {"gold/mean": last["gold/mean"], "kl/mean": last["kl/mean"]}


def run_ppo(work: Path, lora: bool, lr: float, steps: int, extra: list[str], sft_dir: str, batch: int) -> dict:
    from rlhfkit.evaluate import heldout_metrics
    from rlhfkit.recipes.ppo import PPOConfig, PPORolloutConfig
    from rlhfkit.recipes.ppo import run as ppo

    sets = [f"model.name_or_path={sft_dir}", "reward.source=lab:gold", "ppo.kl_coef=0.05", f"train.lr={lr}",
            f"train.max_steps={steps}", f"train.batch_size={batch}", f"train.micro_batch_size={min(batch, 32)}",
            "rollout.max_new_tokens=32", "log.progress=false", "log.save_every=0", "log.eval_every=0", "eval.text=null",
            f"model.lora.enabled={str(lora).lower()}", *extra]
    out = ppo(load_config(PPOConfig, None, sets), work / f"ppo-{int(lora)}-{lr:g}")
    m = heldout_metrics(str(out), ModelConfig(name_or_path=sft_dir), "lab:prompts_eval", 128,
                        PPORolloutConfig(max_new_tokens=32))
    return {"gold/mean": m["gold/mean"], "kl/mean": m["eval/kl"], "response/length": m["eval/response_length"]}


def ensure_sft(folder: str) -> str:
    """The lab SFT model of benchmarks/ppo_lab.py (the SFT recipe on its lab defaults)."""
    from rlhfkit.recipes.sft import SFTConfig
    from rlhfkit.recipes.sft import run as sft

    if not (Path(folder) / "run_complete.json").exists():
        sft(load_config(SFTConfig, None, ["log.progress=false"]), Path(folder).parent)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipes", default="sft,dpo")
    ap.add_argument("--full-lr", type=float, default=None, help="default: sft 1e-3, dpo 5e-4, ppo 5e-5")
    ap.add_argument("--lora-lr", type=float, default=None, help="default: 10x the full learning rate")
    ap.add_argument("--steps", type=int, default=24, help="SFT and DPO steps")
    ap.add_argument("--ppo-steps", type=int, default=40, help="PPO steps (rollout batches)")
    ap.add_argument("--ppo-batch", type=int, default=32, help="PPO episodes per step")
    ap.add_argument("--sft", default="runs/ppo_lab/sft/final", help="PPO's starting model (made here when missing)")
    ap.add_argument("--lora-targets", default=None, help="model.lora.target_modules, e.g. '[c_attn, c_proj, c_fc, lm_head]'")
    ap.add_argument("--lora-only", action="store_true", help="skip the full fine-tuning runs")
    ap.add_argument("--full-only", action="store_true", help="skip the LoRA runs")
    ap.add_argument("--set", nargs="*", default=[], help="extra overrides for every run, e.g. train.seed=1")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from rlhfkit.lab import ensure_lab

    ensure_lab()
    results = [{"recipe": "base", "lora": None, "gold/mean": _gold(None)}]
    print(json.dumps(results[0]), flush=True)
    if "ppo" in args.recipes.split(","):
        from rlhfkit.evaluate import heldout_metrics
        from rlhfkit.recipes.ppo import PPORolloutConfig

        sft_dir = ensure_sft(args.sft)
        m = heldout_metrics(sft_dir, ModelConfig(name_or_path=sft_dir), "lab:prompts_eval", 128, PPORolloutConfig(max_new_tokens=32))
        results.append({"recipe": "ppo-start (sft)", "lora": None, "gold/mean": m["gold/mean"], "kl/mean": m["eval/kl"]})
        print(json.dumps(results[-1]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.recipes.split(","):
            full_lr = args.full_lr or {"sft": 1e-3, "dpo": 5e-4, "ppo": 5e-5}[recipe]
            for lora in (True,) if args.lora_only else (False,) if args.full_only else (False, True):
                extra = [f"model.lora.target_modules={args.lora_targets}"] if lora and args.lora_targets else []
                extra += args.set
                lr = (args.lora_lr or 10 * full_lr) if lora else full_lr
                t0 = time.time()
                if recipe == "ppo":
                    r = run_ppo(Path(tmp), lora, lr, args.ppo_steps, extra, args.sft, args.ppo_batch)
                else:
                    r = {"sft": run_sft, "dpo": run_dpo}[recipe](Path(tmp), lora, lr, args.steps, extra)
                steps = args.ppo_steps if recipe == "ppo" else args.steps
                results.append({"recipe": recipe, "lora": lora, "lr": lr, "steps": steps, "targets": args.lora_targets if lora else None,
                                "set": args.set, **r,
                                "seconds": round(time.time() - t0, 1)})
                print(json.dumps(results[-1]), flush=True)
    print("\n| recipe | LoRA | lr | gold/mean | kl/mean |\n|---|---|---|---|---|")
    for r in results:
        kl = f"{r['kl/mean']:.2f}" if "kl/mean" in r else ""
        print(f"| {r['recipe']} | {r['lora']} | {r.get('lr', '')} | {r['gold/mean']:.3f} | {kl} |")


if __name__ == "__main__":
    main()
