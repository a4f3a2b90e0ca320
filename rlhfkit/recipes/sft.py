"""Supervised fine-tuning on demonstrations, prompt tokens masked from the loss.

    for each step: global batch of demonstrations -> shard per process -> micro-batches
        one forward per micro-batch, its examples packed into rows of max_length (models.packing)
        loss = sum(NLL over response tokens) / (response tokens in the whole global batch)
        backward (accumulate), clip, AdamW step, schedule step
    every eval_every: held-out loss / perplexity; every save_every: checkpoint; end: final/

Packing changes the layout of a micro-batch, not which examples it holds: a block-diagonal causal
mask keeps a row's examples apart, so the loss is that of one padded row per example (to float32
rounding), with 3% of the positions padding instead of ~40% on the lab's demonstrations. Where a
model cannot keep them apart (`models.packing.packing_problem`, or the check on the first examples
fails), each example gets a padded row and micro-batches are cut from the shard sorted by length.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import LogConfig, ModelConfig, TrainConfig, doc, section
from rlhfkit.data import encode_demonstration, read_records
from rlhfkit.evaluate import from_lab, perplexity
from rlhfkit.losses.sft import count_target_tokens, sft_loss
from rlhfkit.models.loading import load_policy, load_tokenizer
from rlhfkit.models.packing import pack_rows, packed_forward, packing_capacity, to_device
from rlhfkit.train.batches import BatchPlan
from rlhfkit.train.optim import build_optimizer, build_scheduler
from rlhfkit.train.session import TrainSession
from rlhfkit.train.step import train_step


@dataclass(frozen=True)
class SFTDataConfig:
    train: str = doc("lab:sft_train", "demonstrations: JSONL/JSON/Parquet file, saved HF dataset folder, or lab:NAME")
    eval: str | None = doc("lab:sft_eval", "held-out demonstrations for loss/perplexity; null = none")
    max_length: int = doc(128, "max tokens per example (prompt truncated from the left first)")
    packing: bool = doc(True, "pack each micro-batch's examples into rows of max_length, kept apart by a block-diagonal "
                              "attention mask (the same loss, less padding); false, or where the model cannot keep them "
                              "apart: one padded row per example, micro-batches of similar lengths")
    eval_examples: int = doc(256, "use at most this many held-out examples per evaluation")


@dataclass(frozen=True)
class SFTConfig:
    model: ModelConfig = section(ModelConfig, "policy to fine-tune")
    data: SFTDataConfig = section(SFTDataConfig, "demonstrations")
    train: TrainConfig = section(TrainConfig, "optimisation")
    log: LogConfig = section(LogConfig, "logging, evaluation and checkpoints")


def tokenize_split(tokenizer, source: str, max_length: int, limit: int | None = None) -> tuple[list[dict], int]:
    records = read_records(source, "demonstration")
    if limit:
        records = records[:limit]
    feats = [encode_demonstration(tokenizer, r, max_length) for r in records]
    return feats, sum(1 for f in feats if f.get("truncated"))


def pack_demonstrations(feats: list[dict], pad_token_id: int, capacity: int | None) -> dict:
    """Demonstration features (`encode_demonstration`) as one `models.packing.pack_rows` batch:
    rows of at most `capacity` tokens, or one right-padded row each (capacity None)."""
    return pack_rows([f["input_ids"] for f in feats], [f["labels"] for f in feats], pad_token_id, capacity)


def micro_batches(plan: BatchPlan, mine: list[int], feats: list[dict], packed: bool) -> list[list[int]]:
    """This process's micro-batches of its shard `mine`. Padded rows: cut from the shard sorted by
    length, so each micro-batch pads to a similar length (the step's loss is a sum over examples
    divided by the global token count: the same for any grouping, to float32 rounding)."""
    if not packed:
        mine = sorted(mine, key=lambda i: len(feats[i]["input_ids"]))
    return list(plan.micro_batches(mine))


def run(cfg: SFTConfig, out: str | Path, resume: bool = False) -> Path:
    s = TrainSession(cfg, out, stage="sft", resume=resume)
    tokenizer = load_tokenizer(cfg.model)
    pad = tokenizer.pad_token_id
    # Read and validate all data before any training starts.
    train_feats, truncated = tokenize_split(tokenizer, cfg.data.train, cfg.data.max_length)
    eval_feats = tokenize_split(tokenizer, cfg.data.eval, cfg.data.max_length, cfg.data.eval_examples)[0] if cfg.data.eval else []
    if truncated and s.is_main:
        print(f"[sft] note: {truncated}/{len(train_feats)} examples truncated to {cfg.data.max_length} tokens")

    plan = BatchPlan(len(train_feats), cfg.train.batch_size, cfg.train.micro_batch_size, s.world_size)
    total = plan.total_steps(cfg.train.epochs, cfg.train.max_steps)
    model = load_policy(cfg.model)

    def announce(why: str) -> None:
        if s.is_main:
            print(f"[sft] packing off: {why}; one padded row per example instead (same loss, more compute)")

    capacity = packing_capacity([model.to(s.device)], cfg.data.max_length, train_feats,
                                functools.partial(pack_demonstrations, pad_token_id=pad), cfg.train.micro_batch_size,
                                announce) if cfg.data.packing else None
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, total)  # stepped by hand: once per optimizer step
    start, _ = s.resume({"policy": model}, optimizer, scheduler)
    model, optimizer = s.accelerator.prepare(model, optimizer)
    model.train()

    bar = s.progress(total, start)
    for step in range(start, total):
        batch_ids = plan.global_batch(step, cfg.train.seed)
        normalizer = count_target_tokens([train_feats[i]["labels"] for i in batch_ids])
        micro = micro_batches(plan, plan.shard(batch_ids, s.rank), train_feats, capacity is not None)

        def loss_fn(ids, normalizer=normalizer):  # this micro-batch's share of the global token mean
            batch = to_device(pack_demonstrations([train_feats[i] for i in ids], pad, capacity), s.device)
            out, x = packed_forward(model, batch)
            return sft_loss(out.logits, x["labels"], normalizer=normalizer)[0], {}

        res = train_step(s, [model], optimizer, scheduler, micro, loss_fn, cfg.train.max_grad_norm)
        metrics = {"loss/sft": s.accelerator.reduce(res.loss, "sum").item(), "train/lr": scheduler.get_last_lr()[0],
                   "train/tokens": normalizer}
        if res.grad_norms:
            metrics["train/grad_norm"] = res.grad_norms[0]
        if eval_feats and cfg.log.eval_every and ((step + 1) % cfg.log.eval_every == 0 or step + 1 == total):
            ev = perplexity(model, eval_feats, pad, cfg.train.micro_batch_size, s.accelerator)
            metrics.update({"eval/loss": ev["loss"], "eval/perplexity": ev["perplexity"]})
        s.log(step + 1, metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss/sft']:.3f}")
        s.maybe_save(step + 1, total, {"policy": model}, optimizer, scheduler, tokenizer=tokenizer)
    bar.close()
    summary = {"steps": total, "lab": from_lab(cfg.model.name_or_path)}  # the lab mark follows the model
    if eval_feats:
        summary["eval/perplexity_on"] = cfg.data.eval
        summary["eval_perplexity"] = perplexity(model, eval_feats, pad, cfg.train.micro_batch_size, s.accelerator)["perplexity"]
    return s.finish({"policy": model}, tokenizer, primary="policy", summary=summary)
