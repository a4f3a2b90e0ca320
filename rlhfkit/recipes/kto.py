"""KTO: preference tuning from thumbs up / down on single responses (Ethayarajh et al. 2024, "KTO:
Model Alignment as Prospect Theoretic Optimization"), no pairs needed.

    examples <- feedback records (prompt, completion, desirable?), or comparisons: best = desirable,
                worst = undesirable (data.read_feedback)
    batches  <- the global batches of every step (BatchPlan, fixed by seed and step); example j of a
                batch is also paired with the completion of the batch's previous example (cyclic,
                skipping ones with the same prompt): the mismatched pairs (x_j, y') that estimate
                the KL term, completions rotated by one within the batch as TRL does
    ref      <- log pi_ref(y|x) of every example and log pi_ref(y'|x) of every mismatched pair, one
                pass before training, cached in the run folder (ref_logps.safetensors, as DPO)
    each step:
        z0   = max(0, mean over the batch's mismatched pairs of log pi(y'|x) - log pi_ref(y'|x)),
               one no-grad pass over all processes' shares: a constant of the step (paper eq. 7)
        rho  = log pi(y|x) - log pi_ref(y|x); implied reward r = beta * rho
        loss = sum over the batch of  lambda_D (1 - sigma(beta (rho - z0)))   desirable
                                      lambda_U (1 - sigma(beta (z0 - rho)))   undesirable
               / (examples in the global batch)                               (losses.kto)
        backward (accumulate), clip, AdamW step, schedule step
    every eval_every: held-out feedback loss and margin (its own mismatched pairs); sampled
        responses: gold/mean (lab), kl/mean (sequence KL to the reference), eval/perplexity

Everything around the loop is DPO's (recipes.dpo): packed sequences with the block-diagonal mask
(models.packing), the reference cache, LoRA (reference = adapters off), accelerate, resume, live alarms (`monitor`,
proxy: the implied reward margin rewards/margin = mean reward of desirable minus undesirable
examples) and the report.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit.config import ConfigError, LogConfig, ModelConfig, TrainConfig, doc, replace, section
from rlhfkit.data import PromptRecord, encode_prompt_responses, read_feedback
from rlhfkit.evaluate import from_lab
from rlhfkit.losses.kto import kto_loss, kto_reference_point
from rlhfkit.models.loading import (
    disable_dropout,
    load_policy,
    load_reference,
    load_tokenizer,
    resolve_model_path,
)
from rlhfkit.models.packing import pack_sequences, sequence_logps, to_device
from rlhfkit.monitor.alarms import MonitorConfig
from rlhfkit.recipes.dpo import (
    DPOSampleConfig,
    cached_reference_logps,
    packing_capacity,
    reference_key,
    sample_eval,
    sampled_eval_inputs,
)
from rlhfkit.train.batches import BatchPlan
from rlhfkit.train.optim import build_optimizer, build_scheduler
from rlhfkit.train.session import TrainSession
from rlhfkit.train.step import train_step
from rlhfkit.train.watch import Watch

# Summed over micro-batches and processes each step; the logged means divide by the counts.
SUM_KEYS = ("rewards/chosen", "rewards/rejected", "count/chosen", "count/rejected", "logps/chosen", "logps/rejected")
BALANCE = (1.0, 4.0 / 3.0)  # KTO paper sec. 4.2, eq. 8: lambda_D n_D / (lambda_U n_U) in [1, 4/3]


@dataclass(frozen=True)
class KTODataConfig:
    train: str = doc("runs/thumbs/feedback.jsonl", "thumbs up/down feedback ({prompt, completion, label}, TRL's unpaired "
                                                   "form too), or comparisons (best = desirable, worst = undesirable): "
                                                   "JSONL/JSON/Parquet file, saved HF dataset folder, or lab:NAME")
    eval: str | None = doc(None, "held-out feedback (or comparisons) for eval/loss and eval/margin; null = none")
    max_length: int = doc(128, "max tokens of prompt + completion (prompt truncated from the left first)")
    packing: bool = doc(True, "pack each micro-batch's sequences into rows of max_length (no padding compute)")
    eval_examples: int = doc(256, "use at most this many held-out examples per evaluation")


@dataclass(frozen=True)
class KTOConfig:
    model: ModelConfig = section(ModelConfig, "policy to train; also the reference unless ref_model is set")
    ref_model: str | None = doc(None, "reference model (HF name or folder); null = the starting policy")
    data: KTODataConfig = section(KTODataConfig, "feedback")
    beta: float = doc(0.1, "KL strength: the implied reward is beta * log(pi / pi_ref)")
    desirable_weight: float = doc(
        1.0, "lambda_D, weight of a desirable (thumbs up) example's loss. KTO paper sec. 4.2, eq. 8: keep "
             "lambda_D n_D / (lambda_U n_U) in [1, 4/3], n_D and n_U the desirable and undesirable counts; with 1 "
             "desirable per 10 undesirable, lambda_U = 1 and lambda_D in [10, 13.3]. The run prints the counts and "
             "warns outside that range")
    undesirable_weight: float = doc(1.0, "lambda_U, weight of an undesirable (thumbs down) example's loss (see desirable_weight)")
    train: TrainConfig = section(TrainConfig, "optimisation")
    log: LogConfig = section(LogConfig, "logging, evaluation and checkpoints")
    sampling: DPOSampleConfig = section(DPOSampleConfig, "periodic sampling evaluation")
    monitor: MonitorConfig = section(MonitorConfig, "reward-hacking alarms during training and what they do",
                                     proxy_key="rewards/margin",
                                     helps={"proxy_key": "the optimised (proxy) reward metric: KTO's implied reward "
                                                         "margin (desirable minus undesirable)"})


# ----------------------------------------------------------------------------- data


def encode_examples(tokenizer, source: str, max_length: int, limit: int | None = None) -> list[dict]:
    """{"prompt", "completion" (ids, the completion ending with EOS), "desirable", "truncated"} of every
    feedback record in `source` (`read_feedback`: a comparison file gives best and worst)."""
    out = []
    for r in read_feedback(source)[: limit or None]:
        prompt, (completion,), truncated = encode_prompt_responses(tokenizer, r, (r.completion,), max_length)
        out.append({"prompt": prompt, "completion": completion, "desirable": r.label, "truncated": truncated})
    return out


def mismatched(examples: list[dict], ids: list[int]) -> list[int]:
    """For each example of a batch (`ids`), the example whose completion its prompt is paired with to
    estimate the KL term: the batch's previous one (cyclic, as TRL rotates completions by one), or
    the one before it, and so on, when their prompts are the same (a comparison gives two examples
    of one prompt). Only a batch of a single prompt pairs examples of the same prompt."""
    out = []
    for j, i in enumerate(ids):
        back = next((b for b in range(1, len(ids)) if examples[ids[j - b]]["prompt"] != examples[i]["prompt"]), 1)
        out.append(ids[(j - back) % len(ids)])
    return out


def kto_items(examples: list[dict], ids: list[int], max_length: int) -> list[dict]:
    """One item per example of a batch, in DPO's pair layout so that packing, the packing check and
    the reference cache take it as is: "chosen" = the example's completion, "rejected" = its
    mismatched completion after its prompt (cut to max_length), "desirable" its label."""
    items = []
    for i, k in zip(ids, mismatched(examples, ids), strict=True):
        e = examples[i]
        items.append({"prompt": e["prompt"], "chosen": e["completion"], "desirable": e["desirable"],
                      "rejected": examples[k]["completion"][: max_length - len(e["prompt"])]})
    return items


def check_balance(cfg: KTOConfig, examples: list[dict], is_main: bool) -> dict[str, int]:
    """Print the class counts and lambda_D n_D / (lambda_U n_U); warn outside [1, 4/3] (paper eq. 8)."""
    n_d = sum(e["desirable"] for e in examples)
    n_u = len(examples) - n_d
    ratio = cfg.desirable_weight * n_d / (cfg.undesirable_weight * n_u) if n_u else float("inf")
    if is_main:
        print(f"[kto] {n_d} desirable, {n_u} undesirable examples; lambda_D n_D / (lambda_U n_U) = {ratio:.4g}")
        if not BALANCE[0] <= ratio <= BALANCE[1] and n_d:
            lo = cfg.undesirable_weight * n_u / n_d
            print(f"[kto] warning: the KTO paper (eq. 8) advises keeping it in [1, 4/3]: desirable_weight between "
                  f"{lo:.3g} and {lo * BALANCE[1]:.3g} with undesirable_weight={cfg.undesirable_weight:g}")
    return {"desirable": n_d, "undesirable": n_u}


# ----------------------------------------------------------------------------- the step's pieces


def _logps(model, items: list[dict], side: str, pad: int, capacity: int | None, device) -> torch.Tensor:
    """Summed log-probs (n,) of each item's prompt + its `side` ("chosen": the example, "rejected":
    the mismatched completion), one packed forward."""
    batch = pack_sequences([it["prompt"] for it in items], [it[side] for it in items], pad, capacity)
    return sequence_logps(model, to_device(batch, device))[0]


@torch.no_grad()
def reference_point(s: TrainSession, model, items: list[dict], ref: torch.Tensor, micro: list[list[int]], pad: int,
                    capacity: int | None) -> torch.Tensor:
    """z0 of a global batch: the mean log-ratio of its mismatched pairs, this process's `micro`
    batches of positions summed with every other process's, clamped at 0 (losses.kto)."""
    with s.accelerator.autocast():
        kl = [_logps(model, [items[j] for j in ids], "rejected", pad, capacity, s.device) for ids in micro]
    mine = [j for ids in micro for j in ids]
    kl = torch.cat(kl) if kl else torch.zeros(0, device=s.device)
    reduce = (lambda t: s.accelerator.reduce(t, "sum")) if s.world_size > 1 else None
    return kto_reference_point(kl.float(), ref[mine, 1].to(s.device), all_reduce=reduce)


def means(sums: dict[str, float]) -> dict[str, float]:
    """Logged means from summed metrics: rewards and log-probs per desirable / undesirable example,
    and the implied reward margin; a side absent from the batch is left out."""
    out = {}
    for side in ("chosen", "rejected"):
        if sums[f"count/{side}"]:
            out[f"rewards/{side}"] = sums[f"rewards/{side}"] / sums[f"count/{side}"]
            out[f"logps/{side}"] = sums[f"logps/{side}"] / sums[f"count/{side}"]
    if "rewards/chosen" in out and "rewards/rejected" in out:
        out["rewards/margin"] = out["rewards/chosen"] - out["rewards/rejected"]
    return out


def _loss(cfg: KTOConfig, model, items: list[dict], ref: torch.Tensor, z0: torch.Tensor, normalizer: int,
          pad: int, capacity: int | None, device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """These items' share of the global batch's KTO loss, and their summed metrics (SUM_KEYS)."""
    logps = _logps(model, items, "chosen", pad, capacity, device)
    desirable = torch.tensor([it["desirable"] for it in items], device=device)
    losses, m = kto_loss(logps, ref[:, 0].to(device), desirable, z0, beta=cfg.beta,
                         desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight)
    m["logps/chosen"], m["logps/rejected"] = (logps.detach() * desirable).sum(), (logps.detach() * ~desirable).sum()
    return losses.sum() / normalizer, {k: m[k] for k in SUM_KEYS}


@torch.no_grad()
def feedback_eval(cfg: KTOConfig, model, items: list[dict], ref: torch.Tensor, pad: int, capacity: int | None,
                  s: TrainSession) -> dict[str, float]:
    """Loss, implied reward margin and z0 of the held-out examples as one batch (their own
    mismatched pairs), all processes summed."""
    was_training = model.training
    model.eval()
    mine = list(range(s.rank, len(items), s.world_size))
    mb = cfg.train.micro_batch_size
    micro = [mine[i : i + mb] for i in range(0, len(mine), mb)]
    z0 = reference_point(s, model, items, ref, micro, pad, capacity)
    sums = torch.zeros(len(SUM_KEYS) + 1, dtype=torch.float64, device=s.device)  # loss, SUM_KEYS
    for ids in micro:
        loss, m = _loss(cfg, model, [items[j] for j in ids], ref[ids], z0, len(items), pad, capacity, s.device)
        sums += torch.stack([loss, *(m[k] for k in SUM_KEYS)]).double()
    model.train(was_training)
    sums = (s.accelerator.reduce(sums, "sum") if s.world_size > 1 else sums).tolist()
    m = means(dict(zip(SUM_KEYS, sums[1:], strict=True)))
    return {"eval/loss": sums[0], "eval/kl": z0.item(), **({"eval/margin": m["rewards/margin"]} if "rewards/margin" in m else {})}


# ----------------------------------------------------------------------------- training


def _check(cfg: KTOConfig) -> None:
    if cfg.beta <= 0:
        raise ConfigError(f"config key 'beta': must be positive, got {cfg.beta}")
    for key in ("desirable_weight", "undesirable_weight"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"config key '{key}': must be positive, got {getattr(cfg, key)}")
    if cfg.train.batch_size < 2:
        raise ConfigError("config key 'train.batch_size': KTO needs at least 2 examples a batch (the KL term pairs "
                          f"each prompt with another example's completion), got {cfg.train.batch_size}")


def run(cfg: KTOConfig, out: str | Path, resume: bool = False) -> Path:
    _check(cfg)
    s = TrainSession(cfg, out, stage="kto", resume=resume)
    tokenizer = load_tokenizer(cfg.model)
    pad = tokenizer.pad_token_id
    # Read and validate all data before any training starts.
    examples = encode_examples(tokenizer, cfg.data.train, cfg.data.max_length)
    held = encode_examples(tokenizer, cfg.data.eval, cfg.data.max_length, cfg.data.eval_examples) if cfg.data.eval else []
    counts = check_balance(cfg, examples, s.is_main)
    ev = sampled_eval_inputs("kto", cfg, tokenizer, s.is_main, "feedback",
                             lambda: [PromptRecord(r.prompt, r.prompt_messages) for r in read_feedback(cfg.data.eval)],
                             [(e["prompt"], e["completion"]) for e in held if e["desirable"]], "desirable completions")
    eval_cfg = ev.config(cfg)
    truncated = sum(e["truncated"] for e in examples)
    if truncated and s.is_main:
        print(f"[kto] note: {truncated}/{len(examples)} examples truncated to {cfg.data.max_length} tokens")

    plan = BatchPlan(len(examples), cfg.train.batch_size, cfg.train.micro_batch_size, s.world_size)
    total = plan.total_steps(cfg.train.epochs, cfg.train.max_steps)
    size = cfg.train.batch_size
    # Every step's batch with its mismatched pairs, fixed in advance so their reference log-probs can
    # be cached: item step * size + j is position j of step's global batch.
    items = [it for step in range(total) for it in kto_items(examples, plan.global_batch(step, cfg.train.seed),
                                                               cfg.data.max_length)]
    eval_items = kto_items(held, list(range(len(held))), cfg.data.max_length) if len(held) > 1 else []
    ref_name = resolve_model_path(cfg.ref_model or cfg.model.name_or_path)

    model = load_policy(cfg.model)
    disable_dropout(model)  # policy and reference log-probs must come from the same function

    @functools.cache
    def load_ref():  # LoRA: the policy with adapters off, no second copy of the weights
        return load_reference(cfg.model, model.to(s.device), cfg.ref_model).to(s.device)

    load_ref()  # loaded (so checked) before the run folder is touched
    capacity = packing_capacity(cfg, [model.to(s.device), *([load_ref()] if cfg.ref_model else [])], items, pad,
                                s.is_main, "kto")
    if capacity is None and cfg.data.packing:  # fell back: every pass pads, and the reference cache key says so
        cfg = replace(cfg, data=replace(cfg.data, packing=False))
    s.prepare()  # all inputs are validated: the run folder (and its reference cache) may be written from here
    ref_tables = cached_reference_logps(s, load_ref, {"train": items, "eval": eval_items},
                                        reference_key(cfg, tokenizer, ref_name), pad, cfg.train.micro_batch_size * 2,
                                        capacity)
    if not ev.prompts:  # the table is all training needs: free the reference's weights before the optimizer state
        load_ref.cache_clear()
    ref_model = load_ref() if ev.prompts else None  # only sampling eval (kl/mean) needs the model itself
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, total)
    start, _ = s.resume({"policy": model}, optimizer, scheduler)
    watch = Watch(s, cfg.monitor, model, tokenizer, start)
    model, optimizer = s.accelerator.prepare(model, optimizer)
    model.train()
    unwrapped = s.accelerator.unwrap_model(model)

    def evaluate(step: int) -> dict[str, float]:
        metrics = feedback_eval(cfg, unwrapped, eval_items, ref_tables["eval"], pad, capacity, s) if eval_items else {}
        metrics.update(sample_eval(eval_cfg, unwrapped, ref_model, tokenizer, ev.prompts, ev.text, s))
        return metrics

    bar = s.progress(total, start)
    final_eval: dict[str, float] = {}
    for step in range(start, total):
        batch, ref = items[step * size : (step + 1) * size], ref_tables["train"][step * size : (step + 1) * size]
        micro = list(plan.micro_batches(plan.shard(list(range(size)), s.rank)))  # positions in the global batch
        z0 = reference_point(s, unwrapped, batch, ref, micro, pad, capacity)

        def loss_fn(ids, z0=z0, batch=batch, ref=ref):  # this micro-batch's share of the global batch's loss
            return _loss(cfg, model, [batch[j] for j in ids], ref[ids], z0, size, pad, capacity, s.device)

        res = train_step(s, [model], optimizer, scheduler, micro, loss_fn, cfg.train.max_grad_norm)
        sums = torch.stack([res.loss.double(), *(res.sums[k].double() for k in SUM_KEYS)])
        sums = (s.accelerator.reduce(sums, "sum") if s.world_size > 1 else sums).tolist()
        metrics = {"loss/kto": sums[0], **means(dict(zip(SUM_KEYS, sums[1:], strict=True))), "kl": z0.item(),
                   "train/lr": scheduler.get_last_lr()[0]}
        if res.grad_norms:
            metrics["train/grad_norm"] = res.grad_norms[0]
        if (cfg.log.eval_every and (step + 1) % cfg.log.eval_every == 0) or step + 1 == total:
            final_eval = evaluate(step + 1)
            metrics.update(final_eval)
        s.log(step + 1, metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss/kto']:.3f}", kl=f"{metrics['kl']:.2f}")
        if watch.after_log(step + 1, metrics, model):
            break
        s.maybe_save(step + 1, total, {"policy": model}, optimizer, scheduler, tokenizer=tokenizer)
    bar.close()
    summary = watch.finish(model)  # keep_best: final/ = the best step's policy
    summary = {"steps": summary.get("stopped_at", total), "examples": len(examples), **counts, "beta": cfg.beta,
               "desirable_weight": cfg.desirable_weight, "undesirable_weight": cfg.undesirable_weight, **final_eval,
               **summary, "lab": from_lab(cfg.model.name_or_path), **ev.heldout.provenance()}
    return s.finish({"policy": model}, tokenizer, primary="policy", summary=summary)
