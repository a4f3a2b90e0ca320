"""`rlhfkit demo`: the main job on the lab default.

Today: build (or reuse) the lab, SFT the base model on the lab's demonstrations, and compare
base vs SFT on held-out prompts (gold, perplexity, length, EOS rate). Later stages (reward model,
PPO, DPO, report) join through `rlhfkit pipeline`.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhfkit.config import ModelConfig, load_config
from rlhfkit.data import read_records
from rlhfkit.evaluate import evaluate_policy, text_features
from rlhfkit.models.loading import load_policy, load_tokenizer
from rlhfkit.recipes import sft


def run(out: str | Path, resume: bool = False) -> dict:
    from rlhfkit.lab import ensure_lab

    out = Path(out)
    lab = ensure_lab()
    print(f"[demo] lab: {lab}")
    sft_cfg = load_config(sft.SFTConfig)
    sft_dir = out / "sft"
    if (sft_dir / "final" / "run_complete.json").exists():
        print(f"[demo] SFT already complete in {sft_dir}; skipping")
    else:
        sft.run(sft_cfg, sft_dir, resume=resume)
    prompts = [r.prompt for r in read_records("lab:prompts_eval", "prompt")][:200]
    summary = {}
    for name, path in [("base", "lab"), ("sft", str(sft_dir / "final"))]:
        mcfg = ModelConfig(name_or_path=path)
        model, tok = load_policy(mcfg), load_tokenizer(mcfg)
        metrics, _ = evaluate_policy(model, tok, prompts, text_features=text_features(tok, "lab:pretrain_eval", limit=200), gold=True)
        summary[name] = metrics
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _print_summary(summary)
    return summary


def _print_summary(summary: dict) -> None:
    keys = ["gold/mean", "eval/perplexity", "response/length", "response/eos_rate"]
    print("\n" + "model".ljust(8) + "".join(k.rjust(20) for k in keys))
    for name, m in summary.items():
        print(name.ljust(8) + "".join(f"{m.get(k, float('nan')):20.3f}" for k in keys))
