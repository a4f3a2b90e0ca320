"""rlhfkit KTO vs TRL KTOTrainer, side by side in one run, on identical model, examples and settings.

Model and words: benchmarks/dpo.py's (a GPT-2 from a config, 4 layers, width 128, word-level
vocabulary of ~1k words). Data: random word prompts (4-16 words) and completions (4-32 words), each
with a coin-flip thumbs up or down, all under max_length, so neither side truncates. Both trainers
see the same global batches in the same order (TRL gets the examples in rlhfkit's batch order with
its required sequential sampler) and so the same mismatched KL pairs: TRL rotates completions by one
within each batch of the dataset, rlhfkit within each global batch (all prompts differ here, so no
example is skipped). Same beta, lambda_D = lambda_U = 1, lr (constant, no warmup), AdamW settings,
grad clipping, dropout off, no evaluation or checkpointing, same threads. Token ids are checked equal.

Timed: everything from the examples to the trained model in memory, end to end: tokenisation,
reference log-probs (rlhfkit always caches them, the mismatched pairs' included; TRL is run with its
default on-the-fly reference and with `precompute_ref_log_probs=True`), training; saving excluded.
Also the steady-state training-loop rate (step 2 to the last step), and each side's least CPU time
(`process_time`, all threads) over the repeats: on a machine shared with other jobs the CPU-time ratio
moves less than the wall-clock one. Reported: examples/s, the ratio,
and the per-step losses of both, which agree when the settings match.

Run: `.venv/bin/python benchmarks/kto.py [--steps 30 --batch 16 --repeats 2]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo import StepTimes, batch_order, build_model, run_recipe  # noqa: E402 - benchmarks/dpo.py, same model and order


def make_examples(words: list[str], n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def text(lo, hi):
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    # TRL concatenates prompt + completion as strings: completions start with a space.
    return [{"prompt": text(4, 16), "completion": " " + text(4, 32), "label": rng.random() < 0.5} for _ in range(n)]


def run_rlhfkit(model_dir: str, data: Path, args) -> tuple[float, StepTimes]:
    from rlhfkit.recipes import kto

    return run_recipe(kto.run, kto.KTOConfig, "loss/kto", [f"beta={args.beta}"], model_dir, data, args)


def run_trl(model_dir: str, rows: list[dict], args, precompute: bool) -> tuple[float, StepTimes]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import KTOConfig, KTOTrainer

    rec = StepTimes()

    class Timer(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            rec.times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        t, cpu = time.perf_counter(), time.process_time()
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        cfg = KTOConfig(
            output_dir=out, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1, max_steps=args.steps,
            learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, beta=args.beta, desirable_weight=1.0,
            undesirable_weight=1.0, max_length=args.max_length, precompute_ref_log_probs=precompute,
            train_sampling_strategy="sequential", bf16=False, use_cpu=True, report_to=[], save_strategy="no",
            eval_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, seed=0, max_grad_norm=1.0,
            weight_decay=0.0, disable_dropout=True,
        )
        trainer = KTOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             callbacks=[Timer()])
        trainer.remove_callback(PrinterCallback)  # per-step log lines; the losses are read from log_history
        trainer.train()
        elapsed, rec.cpu_seconds = time.perf_counter() - t, time.process_time() - cpu
        rec.losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        rec.token_ids = [trainer.train_dataset[i] for i in range(min(8, len(trainer.train_dataset)))]
        return elapsed, rec


def check_same_tokens(model_dir: str, data: Path, trl_rows: list[dict], order: list[int], max_length: int,
                      batch: int) -> None:
    """The first TRL examples (up to 8, within the first batch: KTO's KL pairs are drawn inside a batch)
    tokenise exactly as rlhfkit's, KL completions included."""
    from transformers import AutoTokenizer

    from rlhfkit.recipes.kto import encode_examples, kto_items

    ours = encode_examples(AutoTokenizer.from_pretrained(model_dir), str(data), max_length)
    items = kto_items(ours, order[:batch], max_length)  # the first global batch with its mismatched pairs
    for k, row in enumerate(trl_rows[:batch]):
        e, it = ours[order[k]], items[k]
        assert (row["prompt_ids"], row["completion_ids"]) == (e["prompt"], e["completion"]), f"example {order[k]} differs"
        assert row["KL_completion_ids"] == it["rejected"], f"KL pair of example {order[k]} differs"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--examples", type=int, default=0, help="distinct examples; 0 = steps * batch (one epoch)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", help="also write results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["TQDM_DISABLE"] = "1"  # TRL's reference-precompute bar
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()

    from rlhfkit.data import write_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        words = build_model(tmp / "model")
        model_dir = str(tmp / "model")
        examples = make_examples(words, args.examples or args.steps * args.batch)
        data = write_jsonl(tmp / "feedback.jsonl", examples)
        order = batch_order(len(examples), args.steps, args.batch, seed=0)
        trl_rows = [examples[i] for i in order]  # rlhfkit's batches, in order, for a sequential sampler

        runs = {"rlhfkit": [], "trl": [], "trl_precompute": []}
        for _ in range(args.repeats):  # interleave to share the machine's noise fairly
            runs["rlhfkit"].append(run_rlhfkit(model_dir, data, args))
            runs["trl"].append(run_trl(model_dir, trl_rows, args, precompute=False))
            runs["trl_precompute"].append(run_trl(model_dir, trl_rows, args, precompute=True))
        check_same_tokens(model_dir, data, runs["trl"][0][1].token_ids, order, args.max_length, args.batch)

    n = args.steps * args.batch
    best = {k: min(v, key=lambda x: x[0]) for k, v in runs.items()}
    ours_loss = best["rlhfkit"][1].losses
    result = {
        "benchmark": "kto", "examples_trained": n, "steps": args.steps, "batch": args.batch,
        "max_length": args.max_length, "beta": args.beta, "lr": args.lr,
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
    }
    for k, (seconds, rec) in best.items():
        loop_examples = (len(rec.times) - 1) * args.batch
        result[k] = {
            "seconds": round(seconds, 3), "examples_per_s": round(n / seconds, 2),
            "cpu_seconds": round(min(r.cpu_seconds for _, r in runs[k]), 3),
            "loop_examples_per_s": round(loop_examples / rec.loop_seconds(), 2),
            "first_loss": round(rec.losses[0], 6), "final_loss": round(rec.losses[-1], 6),
        }
        if k != "rlhfkit":
            result[k]["max_abs_loss_diff_vs_rlhfkit"] = max(abs(a - b) for a, b in zip(ours_loss, rec.losses, strict=True))
            result[f"ratio_rlhfkit_over_{k}"] = round(seconds / best["rlhfkit"][0], 3)
            result[f"cpu_ratio_rlhfkit_over_{k}"] = round(result[k]["cpu_seconds"] / result["rlhfkit"]["cpu_seconds"], 3)
            result[f"loop_ratio_rlhfkit_over_{k}"] = round(result["rlhfkit"]["loop_examples_per_s"] / result[k]["loop_examples_per_s"], 3)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
