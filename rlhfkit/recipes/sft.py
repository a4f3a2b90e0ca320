"""Supervised fine-tuning on demonstrations, prompt tokens masked from the loss.

    for each step: global batch of demonstrations -> shard per process -> micro-batches
        loss = sum(NLL over response tokens) / (response tokens in the whole global batch)
        backward (accumulate), clip, AdamW step, schedule step
    every eval_every: held-out loss / perplexity; every save_every: checkpoint; end: final/
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import LogConfig, ModelConfig, TrainConfig, doc, section
from rlhfkit.data import encode_demonstration, read_records
from rlhfkit.data.tokenize import collate_demonstrations, pack_demonstrations
from rlhfkit.evaluate import from_lab, perplexity
from rlhfkit.losses.sft import count_target_tokens, sft_loss
from rlhfkit.models.loading import load_policy, load_tokenizer
from rlhfkit.train.batches import BatchPlan
from rlhfkit.train.optim import build_optimizer, build_scheduler
from rlhfkit.train.session import TrainSession
from rlhfkit.train.step import train_step


@dataclass(frozen=True)
class SFTDataConfig:
    train: str = doc("lab:sft_train", "demonstrations: JSONL/JSON/Parquet file, saved HF dataset folder, or lab:NAME")
    eval: str | None = doc("lab:sft_eval", "held-out demonstrations for loss/perplexity; null = none")
    max_length: int = doc(128, "max tokens per example (prompt truncated from the left first)")
    packing: bool = doc(False, "concatenate examples into full rows of max_length")
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


def run(cfg: SFTConfig, out: str | Path, resume: bool = False) -> Path:
    s = TrainSession(cfg, out, stage="sft", resume=resume)
    tokenizer = load_tokenizer(cfg.model)
    pad = tokenizer.pad_token_id
    # Read and validate all data before any training starts.
    train_feats, truncated = tokenize_split(tokenizer, cfg.data.train, cfg.data.max_length)
    eval_feats = tokenize_split(tokenizer, cfg.data.eval, cfg.data.max_length, cfg.data.eval_examples)[0] if cfg.data.eval else []
    if cfg.data.packing:
        train_feats = pack_demonstrations(train_feats, cfg.data.max_length, tokenizer.eos_token_id)
    if truncated and s.is_main:
        print(f"[sft] note: {truncated}/{len(train_feats)} examples truncated to {cfg.data.max_length} tokens")

    plan = BatchPlan(len(train_feats), cfg.train.batch_size, cfg.train.micro_batch_size, s.world_size)
    total = plan.total_steps(cfg.train.epochs, cfg.train.max_steps)
    model = load_policy(cfg.model)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, total)  # stepped by hand: once per optimizer step
    start, _ = s.resume({"policy": model}, optimizer, scheduler)
    model, optimizer = s.accelerator.prepare(model, optimizer)
    model.train()

    bar = s.progress(total, start)
    for step in range(start, total):
        batch_ids = plan.global_batch(step, cfg.train.seed)
        normalizer = count_target_tokens([train_feats[i]["labels"] for i in batch_ids])
        micro = list(plan.micro_batches(plan.shard(batch_ids, s.rank)))

        def loss_fn(ids, normalizer=normalizer):  # this micro-batch's share of the global token mean
            batch = {k: v.to(s.device) for k, v in collate_demonstrations([train_feats[i] for i in ids], pad).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            return sft_loss(logits, batch["labels"], normalizer=normalizer)[0], {}

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
