"""rlhfkit ORPO vs TRL 1.16's ORPOTrainer (trl.experimental.orpo), side by side in one run.

Model, pairs and batch order: benchmarks/dpo.py's (a GPT-2 from a config, 4 layers, width 128,
word-level vocabulary of ~1k words; random word prompts of 4-16 words and responses of 4-32, all
under max_length; TRL gets the pairs in rlhfkit's batch order with a sequential sampler). Same
lambda (TRL's `beta`), lr (constant, no warmup), AdamW settings, grad clipping, dropout off, no
evaluation or checkpointing, same threads. Token ids are checked equal.

The objectives differ in one place, by design: TRL's NLL term averages over the prompt *and* chosen
tokens, rlhfkit's over the chosen tokens only (as its SFT; rlhfkit/losses/orpo.py). So the total
losses differ, and after the first update so do the weights. The odds-ratio term is the same
function of the same log-probs: at step 1 (identical weights) TRL's logged log_odds_ratio
(mean log sigma(log odds), before lambda) must equal -rlhfkit's loss/or, and its log_odds_chosen
rlhfkit's rewards/margin; both differences are printed. The compute is the same: one forward and
backward over chosen + rejected per pair, no reference model on either side.

Timed: everything from the pairs to the trained model in memory, end to end (tokenisation,
training; saving excluded), the steady-state loop rate (step 2 to the last step), and each side's
least CPU time (`process_time`) over the repeats, which moves less than wall time on a shared machine.

Run: `.venv/bin/python benchmarks/orpo.py [--steps 30 --batch 16 --repeats 2]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo import StepTimes, batch_order, build_model, make_pairs, run_recipe  # noqa: E402 - benchmarks/dpo.py, same model and order


def run_rlhfkit(model_dir: str, data: Path, args) -> tuple[float, StepTimes]:
    """dpo.py's `run_recipe`, keeping step 1's odds-ratio term and log odds as TRL logs them (`first`)."""
    from rlhfkit.recipes import orpo

    def first(metrics: dict) -> dict:
        return {"or_logsigmoid": -metrics["loss/or"], "log_odds": metrics["rewards/margin"]}

    return run_recipe(orpo.run, orpo.ORPOConfig, "loss/orpo", [f"orpo_lambda={args.orpo_lambda}"], model_dir, data,
                      args, first)


def run_trl(model_dir: str, rows: list[dict], args) -> tuple[float, StepTimes]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    rec = StepTimes()

    class Timer(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            rec.times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        t, cpu = time.perf_counter(), time.process_time()
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        cfg = ORPOConfig(
            output_dir=out, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1, max_steps=args.steps,
            learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, beta=args.orpo_lambda,
            max_length=args.max_length, train_sampling_strategy="sequential", bf16=False, use_cpu=True, report_to=[],
            save_strategy="no", eval_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
            seed=0, max_grad_norm=1.0, weight_decay=0.0, disable_dropout=True,
        )
        trainer = ORPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok,
                              callbacks=[Timer()])
        trainer.remove_callback(PrinterCallback)  # per-step log lines; the losses are read from log_history
        trainer.train()
        elapsed, rec.cpu_seconds = time.perf_counter() - t, time.process_time() - cpu
        logged = [h for h in trainer.state.log_history if "loss" in h]
        rec.losses = [h["loss"] for h in logged]
        rec.first = {"or_logsigmoid": logged[0]["log_odds_ratio"], "log_odds": logged[0]["log_odds_chosen"]}
        rec.token_ids = [trainer.train_dataset[i] for i in range(min(8, len(trainer.train_dataset)))]
        return elapsed, rec


def check_same_tokens(model_dir: str, data: Path, trl_rows: list[dict], order: list[int], max_length: int) -> None:
    """The first TRL rows hold rlhfkit's prompt and responses token for token (TRL stores the prompt,
    then prompt + response for each side)."""
    from transformers import AutoTokenizer

    from rlhfkit.recipes.dpo import encode_pairs

    ours = encode_pairs(AutoTokenizer.from_pretrained(model_dir), str(data), "all", max_length)
    for k, row in enumerate(trl_rows):
        p, n = ours[order[k]], len(row["prompt_input_ids"])
        got = (row["prompt_input_ids"], row["chosen_input_ids"][n:], row["rejected_input_ids"][n:])
        assert row["chosen_input_ids"][:n] == row["rejected_input_ids"][:n] == row["prompt_input_ids"]
        assert got == (p["prompt"], p["chosen"], p["rejected"]), f"pair {order[k]} tokenises differently"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=0, help="distinct pairs; 0 = steps * batch (one epoch, each pair once)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--orpo-lambda", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", help="also write results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["TQDM_DISABLE"] = "1"
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()

    from rlhfkit.data import write_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        words = build_model(tmp / "model")
        model_dir = str(tmp / "model")
        pairs = make_pairs(words, args.pairs or args.steps * args.batch)
        data = write_jsonl(tmp / "pairs.jsonl", pairs)
        order = batch_order(len(pairs), args.steps, args.batch, seed=0)
        trl_rows = [pairs[i] for i in order]  # rlhfkit's batches, in order, for a sequential sampler

        runs = {"rlhfkit": [], "trl": []}
        for _ in range(args.repeats):  # interleave to share the machine's noise fairly
            runs["rlhfkit"].append(run_rlhfkit(model_dir, data, args))
            runs["trl"].append(run_trl(model_dir, trl_rows, args))
        check_same_tokens(model_dir, data, runs["trl"][0][1].token_ids, order, args.max_length)

    n = args.steps * args.batch
    best = {k: min(v, key=lambda x: x[0]) for k, v in runs.items()}
    result = {
        "benchmark": "orpo", "pairs_trained": n, "steps": args.steps, "batch": args.batch,
        "max_length": args.max_length, "orpo_lambda": args.orpo_lambda, "lr": args.lr,
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
    }
    for k, (seconds, rec) in best.items():
        loop_pairs = (len(rec.times) - 1) * args.batch
        result[k] = {
            "seconds": round(seconds, 3), "pairs_per_s": round(n / seconds, 2),
            "cpu_seconds": round(min(r.cpu_seconds for _, r in runs[k]), 3),
            "loop_pairs_per_s": round(loop_pairs / rec.loop_seconds(), 2),
            "first_loss": round(rec.losses[0], 6), "final_loss": round(rec.losses[-1], 6),
            "step1": {name: round(v, 8) for name, v in rec.first.items()},
        }
    ours, trl = best["rlhfkit"][1].first, best["trl"][1].first
    result["step1_abs_diff"] = {name: abs(ours[name] - trl[name]) for name in ours}
    result["ratio_rlhfkit_over_trl"] = round(best["trl"][0] / best["rlhfkit"][0], 3)
    result["cpu_ratio_rlhfkit_over_trl"] = round(result["trl"]["cpu_seconds"] / result["rlhfkit"]["cpu_seconds"], 3)
    result["loop_ratio_rlhfkit_over_trl"] = round(result["rlhfkit"]["loop_pairs_per_s"] / result["trl"]["loop_pairs_per_s"], 3)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
