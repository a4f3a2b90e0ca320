"""LoRA vs full fine-tuning on the lab: held-out gold after SFT and after DPO, same data and steps.

    python benchmarks/lora_gold.py [--recipes sft,dpo] [--lora-lr 5e-3]

SFT: lab:sft_train demonstrations, then the recipe-independent `evaluate_policy` on 96 held-out
prompts (seed 1234). DPO: the setup of tests/test_dpo_lab.py (160 prompts x K=4 from the base
model ranked by the simulated annotator, 24 steps of 32 pairs), gold from the recipe's own
sampling evaluation. LoRA gets a larger learning rate (adapters start at zero and are small), the
usual practice; everything else is identical. Prints one JSON line per run and a table.
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
    from rlhfkit.recipes import compare, dpo

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipes", default="sft,dpo")
    ap.add_argument("--full-lr", type=float, default=None, help="default: sft 1e-3, dpo 5e-4")
    ap.add_argument("--lora-lr", type=float, default=None, help="default: 10x the full learning rate")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--lora-targets", default=None, help="model.lora.target_modules, e.g. '[c_attn, c_proj, c_fc, lm_head]'")
    ap.add_argument("--lora-only", action="store_true", help="skip the full fine-tuning runs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from rlhfkit.lab import ensure_lab

    ensure_lab()
    results = [{"recipe": "base", "lora": None, "gold/mean": _gold(None)}]
    print(json.dumps(results[0]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.recipes.split(","):
            full_lr = args.full_lr or {"sft": 1e-3, "dpo": 5e-4}[recipe]
            for lora in (True,) if args.lora_only else (False, True):
                extra = [f"model.lora.target_modules={args.lora_targets}"] if lora and args.lora_targets else []
                lr = (args.lora_lr or 10 * full_lr) if lora else full_lr
                t0 = time.time()
                r = {"sft": run_sft, "dpo": run_dpo}[recipe](Path(tmp), lora, lr, args.steps, extra)
                results.append({"recipe": recipe, "lora": lora, "lr": lr, "steps": args.steps, "targets": args.lora_targets if lora else None, **r,
                                "seconds": round(time.time() - t0, 1)})
                print(json.dumps(results[-1]), flush=True)
    print("\n| recipe | LoRA | lr | gold/mean |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['recipe']} | {r['lora']} | {r.get('lr', '')} | {r['gold/mean']:.3f} |")


if __name__ == "__main__":
    main()
