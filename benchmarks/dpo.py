"""rlhfkit DPO vs TRL DPOTrainer, side by side in one run, on identical model, pairs and settings.

Model: a GPT-2 built from a config (4 layers, width 128, word-level vocabulary of ~1k words) and
saved to a temp folder with its tokenizer. Data: random word prompts (4-16 words) and responses
(4-32 words), all pairs under max_length, so neither side truncates. Both trainers see exactly
the same global batches in the same order (TRL gets the pairs in rlhfkit's batch order with a
sequential sampler), the same beta, lr (constant, no warmup), AdamW settings, grad clipping,
dropout off, no evaluation or checkpointing, same threads. The token ids are checked equal.

Timed: everything from the pairs to the trained model in memory, end to end: tokenisation,
reference log-probs (rlhfkit always precomputes them; TRL is run both with its default
on-the-fly reference and with `precompute_ref_log_probs=True`), training; saving excluded.
Also the steady-state training-loop rate (step 2 to the last step). Reported: pairs/s, the
ratio, and the per-step losses of both, which must agree when the settings match.

Run: `.venv/bin/python benchmarks/dpo.py [--steps 30 --batch 16 --repeats 2]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

SIZES = {"small": dict(n_layer=4, n_embd=128, n_head=4, n_positions=256)}  # + memory.py's MODELS (--model)


def build_model(folder: Path, vocab_words: int = 1000, seed: int = 0, model: str = "small") -> list[str]:
    """Word-level tokenizer (+ <pad>, <eos>, <unk>) and a GPT-2 from a config, saved together:
    `model` = small (4 layers, width 128) or a size of benchmarks/memory.py's MODELS (gpt2-100m:
    12 layers, width 768, 128 positions)."""
    from memory import MODELS
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(vocab_words)]
    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
                                   model_max_length=256)
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(vocab), **(SIZES.get(model) or MODELS[model]),
                     eos_token_id=fast.eos_token_id, bos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    return words


def make_pairs(words: list[str], n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def text(lo, hi):
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    # TRL concatenates prompt + completion as strings: responses start with a space.
    return [{"prompt": text(4, 16), "chosen": " " + text(4, 32), "rejected": " " + text(4, 32)} for _ in range(n)]


def batch_order(n_pairs: int, steps: int, batch: int, seed: int) -> list[int]:
    """The pair indices rlhfkit trains on, step by step (its deterministic BatchPlan)."""
    from rlhfkit.train.batches import BatchPlan

    plan = BatchPlan(n_pairs, batch, batch)
    return [i for s in range(steps) for i in plan.global_batch(s, seed)]


class StepTimes:
    """Wall-clock time and loss at every logged step (rlhfkit: metrics log; TRL: a callback), the
    run's CPU seconds (`process_time`, all threads) and what a benchmark keeps of step 1 (`first`)."""

    def __init__(self):
        self.times: list[float] = []
        self.losses: list[float] = []
        self.cpu_seconds = 0.0
        self.first: dict[str, float] = {}

    def loop_seconds(self) -> float:
        return self.times[-1] - self.times[0]


def run_recipe(run: Callable, config_cls: type, loss_key: str, overrides: list[str], model_dir: str, data: Path,
               args, first: Callable[[dict], dict] | None = None) -> tuple[float, StepTimes]:
    """The rlhfkit side of dpo.py, kto.py and orpo.py: `run` (a recipe's run) with `config_cls` on
    `data`, one micro-batch of args.batch a step, args.steps steps, constant lr, no warmup, no
    sampling, evaluation or checkpoints, + `overrides` (the recipe's own: beta, orpo_lambda).
    Returns the seconds from the parsed config to the trained model in memory (saving skipped) and
    the time and `loss_key` of every logged step, the CPU seconds, and `first(metrics)` of step 1."""
    from rlhfkit.config import load_config
    from rlhfkit.train import run_dir, session

    cfg = load_config(config_cls, None, [
        f"model.name_or_path={model_dir}", f"data.train={data}", f"data.max_length={args.max_length}",
        "sampling.prompts=null", "sampling.text=null", *overrides, f"train.lr={args.lr}",
        f"train.batch_size={args.batch}", f"train.micro_batch_size={args.batch}", f"train.max_steps={args.steps}",
        "train.schedule=constant", "train.warmup_ratio=0", "train.seed=0", "log.save_every=0", "log.eval_every=0",
        "log.progress=false",
    ])
    rec = StepTimes()
    log, finish = run_dir.MetricsLog.log, session.TrainSession.finish

    def timed_log(self, step, metrics):
        rec.times.append(time.perf_counter())
        rec.losses.append(metrics[loss_key])
        if first is not None and not rec.first:
            rec.first = first(metrics)
        return log(self, step, metrics)

    run_dir.MetricsLog.log = timed_log
    session.TrainSession.finish = lambda self, *a, **k: None  # measure training, not saving
    try:
        with tempfile.TemporaryDirectory() as out:
            t, cpu = time.perf_counter(), time.process_time()
            run(cfg, out)
            rec.cpu_seconds = time.process_time() - cpu
            return time.perf_counter() - t, rec
    finally:
        run_dir.MetricsLog.log, session.TrainSession.finish = log, finish


def run_rlhfkit(model_dir: str, data: Path, args) -> tuple[float, StepTimes]:
    from rlhfkit.recipes import dpo

    return run_recipe(dpo.run, dpo.DPOConfig, "loss/dpo", [f"beta={args.beta}"], model_dir, data, args)


def run_trl(model_dir: str, rows: list[dict], args, precompute: bool) -> tuple[float, StepTimes]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    rec = StepTimes()

    class Timer(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            rec.times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        cfg = DPOConfig(
            output_dir=out, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1, max_steps=args.steps,
            learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, beta=args.beta, loss_type=["sigmoid"],
            max_length=args.max_length, precompute_ref_log_probs=precompute, train_sampling_strategy="sequential",
            bf16=False, use_cpu=True, report_to=[], save_strategy="no", eval_strategy="no", logging_steps=1,
            disable_tqdm=True, dataloader_num_workers=0, seed=0, max_grad_norm=1.0, weight_decay=0.0,
            disable_dropout=True,
        )
        trainer = DPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             callbacks=[Timer()])
        trainer.remove_callback(PrinterCallback)  # per-step log lines; the losses are read from log_history
        trainer.train()
        elapsed = time.perf_counter() - t
        rec.losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        rec.token_ids = [trainer.train_dataset[i] for i in range(min(8, len(trainer.train_dataset)))]
        return elapsed, rec


def check_same_tokens(model_dir: str, data: Path, trl_rows: list[dict], order: list[int], max_length: int) -> None:
    """The first TRL examples tokenise exactly as rlhfkit's pairs do."""
    from transformers import AutoTokenizer

    from rlhfkit.recipes.dpo import encode_pairs

    ours = encode_pairs(AutoTokenizer.from_pretrained(model_dir), str(data), "all", max_length)
    for k, row in enumerate(trl_rows):
        p = ours[order[k]]
        got = (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"])
        assert got == (p["prompt"], p["chosen"], p["rejected"]), f"pair {order[k]} tokenises differently"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=0, help="distinct pairs; 0 = steps * batch (one epoch, each pair once)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default="small", help="small (4 layers, width 128) or gpt2-100m (benchmarks/memory.py's config)")
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
        words = build_model(tmp / "model", model=args.model)
        model_dir = str(tmp / "model")
        pairs = make_pairs(words, args.pairs or args.steps * args.batch)
        data = write_jsonl(tmp / "pairs.jsonl", pairs)
        order = batch_order(len(pairs), args.steps, args.batch, seed=0)
        trl_rows = [pairs[i] for i in order]  # rlhfkit's batches, in order, for a sequential sampler

        runs = {"rlhfkit": [], "trl": [], "trl_precompute": []}
        for _ in range(args.repeats):  # interleave to share the machine's noise fairly
            runs["rlhfkit"].append(run_rlhfkit(model_dir, data, args))
            runs["trl"].append(run_trl(model_dir, trl_rows, args, precompute=False))
            runs["trl_precompute"].append(run_trl(model_dir, trl_rows, args, precompute=True))
        check_same_tokens(model_dir, data, runs["trl"][0][1].token_ids, order, args.max_length)

    n = args.steps * args.batch
    best = {k: min(v, key=lambda x: x[0]) for k, v in runs.items()}
    ours_loss = best["rlhfkit"][1].losses
    result = {
        "benchmark": "dpo", "pairs_trained": n, "steps": args.steps, "batch": args.batch, "max_length": args.max_length,
        "beta": args.beta, "lr": args.lr, "model": args.model,
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
    }
    for k, (seconds, rec) in best.items():
        loop_pairs = (len(rec.times) - 1) * args.batch
        result[k] = {
            "seconds": round(seconds, 3), "pairs_per_s": round(n / seconds, 2),
            "loop_pairs_per_s": round(loop_pairs / rec.loop_seconds(), 2),
            "first_loss": round(rec.losses[0], 6), "final_loss": round(rec.losses[-1], 6),
        }
        if k != "rlhfkit":
            result[k]["max_abs_loss_diff_vs_rlhfkit"] = max(abs(a - b) for a, b in zip(ours_loss, rec.losses, strict=True))
            result[f"ratio_rlhfkit_over_{k}"] = round(seconds / best["rlhfkit"][0], 3)
            result[f"loop_ratio_rlhfkit_over_{k}"] = round(result["rlhfkit"]["loop_pairs_per_s"] / result[k]["loop_pairs_per_s"], 3)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
