"""rlhfkit reward vs TRL RewardTrainer, side by side in one run: same model, pairs, batches, steps.

Model: a GPT-2 built from a config (4 layers, width 128, word-level vocabulary of ~1k words, pad
!= EOS) with rlhfkit's scalar head (`build_reward_model`, seed 0); TRL is handed the very same
initial weights. Data: chosen/rejected pairs whose preference follows a hidden rule (the response
with more words from a "good" subset wins), so held-out accuracy measures learning. Both trainers
see exactly the same global batches in the same order (TRL gets the pairs in rlhfkit's batch order
with a sequential sampler), the same lr (constant, no warmup), AdamW settings, grad clipping,
dropout off, no evaluation or checkpointing during training, same threads; token ids are checked
equal, and the per-step losses must agree (same maths: −log σ(r_c − r_r), mean over pairs).

Timed: from the records to the trained model in memory (tokenisation included, saving and
rlhfkit's post-training normalisation excluded), and the steady-state loop rate (step 2 to the
last). Then both trained models are scored by the same function on the same held-out pairs.

Run: `.venv/bin/python benchmarks/reward.py [--steps 40 --batch 16 --repeats 2 --threads 1]`.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo import batch_order, build_model  # noqa: E402  (the DPO benchmark's word-level GPT-2 and batch order)


def make_pairs(words: list[str], n: int, seed: int, good_share: int = 20) -> list[dict]:
    """Pairs ranked by a hidden rule: more words from the first 1/good_share of the vocabulary wins."""
    rng = random.Random(seed)
    good = set(words[: len(words) // good_share])

    def text(lo, hi):
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    def response():
        w = text(4, 28).split() + rng.sample(sorted(good), rng.randint(0, 4))
        rng.shuffle(w)
        return w

    rows = []
    while len(rows) < n:
        a, b = response(), response()
        sa, sb = sum(x in good for x in a), sum(x in good for x in b)
        if sa == sb:
            continue
        chosen, rejected = (a, b) if sa > sb else (b, a)
        # TRL concatenates prompt + completion as strings: responses start with a space.
        rows.append({"prompt": text(4, 16), "chosen": " " + " ".join(chosen), "rejected": " " + " ".join(rejected)})
    return rows


class Record:
    def __init__(self):
        self.times: list[float] = []
        self.losses: list[float] = []
        self.model = None

    def loop_seconds(self) -> float:
        return self.times[-1] - self.times[0]


def run_rlhfkit(model_dir: str, data: Path, args) -> tuple[float, Record]:
    from rlhfkit.config import load_config
    from rlhfkit.recipes import reward
    from rlhfkit.train import run_dir, session

    cfg = load_config(reward.RewardConfig, None, [
        f"model.name_or_path={model_dir}", f"data.train={data}", "data.eval_fraction=0", f"data.max_length={args.max_length}",
        "normalize.source=none", f"train.lr={args.lr}", f"train.batch_size={args.batch}",
        f"train.micro_batch_size={args.batch}", f"train.max_steps={args.steps}", "train.schedule=constant",
        "train.warmup_ratio=0", "train.seed=0", "log.save_every=0", "log.eval_every=0", "log.progress=false",
    ])
    rec = Record()
    log, finish = run_dir.MetricsLog.log, session.TrainSession.finish

    def timed_log(self, step, metrics):
        rec.times.append(time.perf_counter())
        rec.losses.append(metrics["loss/reward"])
        return log(self, step, metrics)

    def keep_model(self, models, *a, **k):  # measure training, not saving
        rec.model = self.accelerator.unwrap_model(models["reward"])

    run_dir.MetricsLog.log, session.TrainSession.finish = timed_log, keep_model
    try:
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            reward.run(cfg, out)
            return time.perf_counter() - t, rec
    finally:
        run_dir.MetricsLog.log, session.TrainSession.finish = log, finish


def run_trl(model_dir: str, rows: list[dict], args) -> tuple[float, Record]:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from rlhfkit.config import ModelConfig
    from rlhfkit.models.reward import build_reward_model

    rec = Record()

    class Timer(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            rec.times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = build_reward_model(ModelConfig(name_or_path=model_dir), tok.pad_token_id, seed=0)  # same init as ours
        cfg = RewardConfig(
            output_dir=out, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1, max_steps=args.steps,
            learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, max_length=args.max_length,
            train_sampling_strategy="sequential", bf16=False, use_cpu=True, report_to=[], save_strategy="no",
            eval_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, seed=0,
            max_grad_norm=1.0, weight_decay=0.0, disable_dropout=True, center_rewards_coefficient=None,
        )
        trainer = RewardTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok,
                                callbacks=[Timer()])
        trainer.train()
        elapsed = time.perf_counter() - t
        rec.losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        rec.token_ids = [trainer.train_dataset[i] for i in range(min(8, len(trainer.train_dataset)))]
        rec.model = trainer.model
        return elapsed, rec


@torch.no_grad()
def held_out_accuracy(model, tokenizer, pairs: list[dict], max_length: int) -> float:
    """Share of held-out pairs where r(chosen) > r(rejected), scored by rlhfkit's scorer for both."""
    from rlhfkit.models.reward import encode_scored
    from rlhfkit.recipes.reward import score_rows

    rows = [encode_scored(tokenizer, p["prompt"], p[k], max_length) for p in pairs for k in ("chosen", "rejected")]
    r = score_rows(model, rows, tokenizer.pad_token_id, 64, torch.device("cpu"))
    return (r[0::2] > r[1::2]).double().mean().item()


def check_same_tokens(model_dir: str, trl_rows: list[dict], pairs: list[dict], order: list[int], max_length: int) -> None:
    from transformers import AutoTokenizer

    from rlhfkit.models.reward import encode_scored

    tok = AutoTokenizer.from_pretrained(model_dir)
    for k, row in enumerate(trl_rows):
        p = pairs[order[k]]
        ours = (encode_scored(tok, p["prompt"], p["chosen"], max_length), encode_scored(tok, p["prompt"], p["rejected"], max_length))
        assert (row["chosen_ids"], row["rejected_ids"]) == ours, f"pair {order[k]} tokenises differently"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--eval-pairs", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default="small", help="small (4 layers, width 128) or gpt2-100m (benchmarks/memory.py's config)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", help="also write results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoTokenizer

    from rlhfkit.data import write_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        words = build_model(tmp / "model", model=args.model)
        model_dir = str(tmp / "model")
        pairs = make_pairs(words, args.steps * args.batch, seed=0)  # one epoch, each pair once
        held = make_pairs(words, args.eval_pairs, seed=1)
        data = write_jsonl(tmp / "pairs.jsonl", pairs)
        order = batch_order(len(pairs), args.steps, args.batch, seed=0)
        trl_rows = [pairs[i] for i in order]  # rlhfkit's batches, in order, for a sequential sampler

        runs = {"rlhfkit": [], "trl": []}
        for _ in range(args.repeats):  # interleaved, to share the machine's noise fairly
            runs["rlhfkit"].append(run_rlhfkit(model_dir, data, args))
            runs["trl"].append(run_trl(model_dir, trl_rows, args))
        check_same_tokens(model_dir, runs["trl"][0][1].token_ids, pairs, order, args.max_length)
        tok = AutoTokenizer.from_pretrained(model_dir)
        best = {k: min(v, key=lambda x: x[0]) for k, v in runs.items()}
        acc = {k: held_out_accuracy(rec.model, tok, held, args.max_length) for k, (_, rec) in best.items()}

    n = args.steps * args.batch
    result = {
        "benchmark": "reward", "pairs_trained": n, "steps": args.steps, "batch": args.batch, "lr": args.lr,
        "max_length": args.max_length, "held_out_pairs": args.eval_pairs, "model": args.model,
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
    }
    for k, (seconds, rec) in best.items():
        loop_pairs = (len(rec.times) - 1) * args.batch
        result[k] = {
            "seconds": round(seconds, 3), "all_seconds": [round(s, 3) for s, _ in runs[k]],
            "pairs_per_s": round(n / seconds, 2), "loop_pairs_per_s": round(loop_pairs / rec.loop_seconds(), 2),
            "first_loss": round(rec.losses[0], 6), "final_loss": round(rec.losses[-1], 6),
            "held_out_accuracy": round(acc[k], 4),
        }
    ours, trl = best["rlhfkit"][1].losses, best["trl"][1].losses
    result["max_abs_loss_diff"] = max(abs(a - b) for a, b in zip(ours, trl, strict=True))
    result["speedup_rlhfkit_over_trl"] = round(best["trl"][0] / best["rlhfkit"][0], 3)
    result["loop_speedup_rlhfkit_over_trl"] = round(result["rlhfkit"]["loop_pairs_per_s"] / result["trl"]["loop_pairs_per_s"], 3)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
