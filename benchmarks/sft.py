"""rlhfkit SFT vs TRL SFTTrainer, side by side in one run, on identical model, data and settings.

Both train the lab base model on the same lab demonstrations (prompt-completion, loss on the
completion only), same global batch, max length, steps, learning rate, schedule, no evaluation or
checkpointing, same threads. Timed: everything from the data file to the trained model in memory
(tokenisation included, model saving excluded). Reported: tokens/s (completion + prompt tokens
processed) and the ratio. Run: `.venv/bin/python benchmarks/sft.py [--steps 40]`.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from mfu import model_folder  # the lab model, or a random GPT-2 of memory.py's sizes


def tokens_processed(tokenizer, rows: list[dict], steps: int, batch: int, max_length: int) -> int:
    """Tokens in steps*batch examples (cycled), the same count for both trainers."""
    n = steps * batch
    lengths = [min(len(tokenizer(r["prompt"])["input_ids"]) + len(tokenizer(r["response"])["input_ids"]) + 1, max_length) for r in rows]
    return sum(lengths[i % len(lengths)] for i in range(n))


def run_rlhfkit(model_dir: str, data: Path, args) -> float:
    from rlhfkit.config import load_config
    from rlhfkit.recipes import sft
    from rlhfkit.train import session

    cfg = load_config(sft.SFTConfig, None, [
        f"model.name_or_path={model_dir}", f"data.train={data}", "data.eval=null", f"data.max_length={args.max_length}",
        f"train.batch_size={args.batch}", f"train.micro_batch_size={args.batch}", f"train.max_steps={args.steps}",
        "train.lr=5e-4", "train.schedule=linear", "train.warmup_ratio=0", "log.save_every=0", "log.eval_every=0",
        "log.progress=false", "log.log_every=1000000",
    ])
    finish = session.TrainSession.finish
    session.TrainSession.finish = lambda self, *a, **k: None  # measure training, not saving
    try:
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            sft.run(cfg, out)
            return time.perf_counter() - t
    finally:
        session.TrainSession.finish = finish


def run_trl(model_dir: str, data: Path, args) -> float:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        ds = load_dataset("json", data_files=str(data), split="train").rename_column("response", "completion")
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        cfg = SFTConfig(
            output_dir=out, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
            max_steps=args.steps, learning_rate=5e-4, lr_scheduler_type="linear", warmup_steps=0,
            max_length=args.max_length, completion_only_loss=True, packing=False, bf16=False, use_cpu=True,
            report_to=[], save_strategy="no", eval_strategy="no", logging_steps=1_000_000, disable_tqdm=True,
            dataloader_num_workers=0, seed=0, max_grad_norm=1.0, weight_decay=0.0,
        )
        SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok).train()
        return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="lab", help="lab (the lab base model) or gpt2-100m (benchmarks/memory.py's config, "
                   "random weights, lab tokenizer)")
    p.add_argument("--json", help="also write results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from rlhfkit.lab import data_file, ensure_lab

    ensure_lab()
    work = tempfile.TemporaryDirectory()
    model_dir, data = model_folder(args.model, Path(work.name)), data_file("sft_train")
    from transformers import AutoTokenizer

    rows = [json.loads(x) for x in data.read_text().splitlines() if x.strip()]
    tokens = tokens_processed(AutoTokenizer.from_pretrained(model_dir), rows, args.steps, args.batch, args.max_length)
    ours, theirs = [], []
    for _ in range(args.repeats):  # interleave to share the machine's noise fairly
        ours.append(run_rlhfkit(model_dir, data, args))
        theirs.append(run_trl(model_dir, data, args))
    a, b = min(ours), min(theirs)
    result = {
        "benchmark": "sft", "model": args.model, "steps": args.steps, "batch": args.batch, "max_length": args.max_length,
        "tokens": tokens, "rlhfkit_tokens_per_s": tokens / a, "trl_tokens_per_s": tokens / b,
        "ratio_rlhfkit_over_trl": b / a, "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
