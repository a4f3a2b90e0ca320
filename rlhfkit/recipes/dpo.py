"""Direct preference optimisation: train a policy straight from comparisons, no reward model.

    pairs  <- every comparison's C(K,2) (winner, loser) pairs, or best vs worst only
    ref    <- log pi_ref(chosen), log pi_ref(rejected) for every pair, one pass before training,
              cached in the run folder (skipped for reference-free losses such as SimPO)
    for each step: global batch of pairs -> shard per process -> micro-batches
        one forward over [chosen_1..m, rejected_1..m], packed into rows without padding
        loss = sum over pairs of DPO_LOSSES[loss_type] / (pairs in the whole global batch)
        backward (accumulate), clip, AdamW step, schedule step
    every eval_every: held-out pair loss/accuracy; sample eval prompts -> gold/mean (lab),
        kl/mean (sequence KL to the reference), eval/perplexity on held-out text

ORPO (Hong et al. 2024; `loss_type: orpo`, or `rlhfkit orpo` with its defaults) runs in the same
loop on the same packed pairs with no reference model at all: loss = NLL(chosen) + lambda * odds-ratio
term (losses.orpo); with no reference, the sampling evaluation reports no kl/mean. KTO (recipes.kto)
reuses this file's reference cache and evaluation, and the packed passes (models.packing), on
unpaired feedback.

After every logged step `monitor` checks the reward-hacking alarms (alarms.jsonl) and applies its
action: warn, stop (final/ = that step, run_complete.json says why), or keep_best (final/ = the
best logged step by `monitor.best_metric`, snapshotted in best/). DPO has no proxy reward model;
the proxy is the implicit reward margin `rewards/margin` (losses.dpo: beta * the policy-vs-reference
log-ratio of chosen minus rejected), checked against gold/mean on the eval rows that carry both.

Why one file (~520 lines): besides the pair loop it holds what KTO reuses with DPO's config sections
(the reference log-prob cache and the sampling evaluation) and the loss registry `OBJECTIVES` the
config's loss_type is read from; the loss maths is in `losses/`, packed rows in `models.packing`.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rlhfkit.config import ConfigError, LogConfig, ModelConfig, TrainConfig, doc, replace, section
from rlhfkit.data import encode_prompt_responses, read_records
from rlhfkit.evaluate import (
    HeldOut,
    Judge,
    evaluate_policy,
    from_lab,
    held_out,
    text_features,
)
from rlhfkit.losses.dpo import DPO_LOSSES, REFERENCE_FREE, preference_loss
from rlhfkit.losses.orpo import orpo_loss
from rlhfkit.models import packing
from rlhfkit.models.loading import (
    disable_dropout,
    follow_umask,
    load_policy,
    load_reference,
    load_tokenizer,
    resolve_model_path,
)
from rlhfkit.models.packing import pack_sequences, sequence_logps, to_device
from rlhfkit.monitor.alarms import MonitorConfig
from rlhfkit.rollout import SamplingParams
from rlhfkit.train.batches import BatchPlan
from rlhfkit.train.optim import build_optimizer, build_scheduler
from rlhfkit.train.session import TrainSession
from rlhfkit.train.shard import gathered
from rlhfkit.train.step import train_step
from rlhfkit.train.watch import Watch

METRIC_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "logps/chosen", "logps/rejected")
# ORPO's rewards/margin is its log odds ratio, log odds(chosen) - log odds(rejected) (paper eq. 7).
ORPO_METRIC_KEYS = ("loss/nll", "loss/or", "rewards/margin", "rewards/accuracy", "logps/chosen", "logps/rejected")


@dataclass(frozen=True)
class DPODataConfig:
    train: str = doc("runs/compare/comparisons.jsonl", "comparisons: JSONL/JSON/Parquet file, saved HF dataset folder, or lab:NAME")
    eval: str | None = doc(None, "held-out comparisons for eval/loss and eval/accuracy; null = none")
    pairs: Literal["all", "best_vs_worst"] = doc("all", "pairs from a K-wise ranking: all C(K,2), or best vs worst only")
    max_length: int = doc(128, "max tokens of prompt + response (prompt truncated from the left first)")
    packing: bool = doc(True, "pack each micro-batch's sequences into rows of max_length (no padding compute)")
    eval_pairs: int = doc(256, "use at most this many held-out pairs per evaluation")


@dataclass(frozen=True)
class DPOSampleConfig:
    prompts: str | None = doc("auto", "prompts sampled at every evaluation for kl/mean (and gold/mean); auto = lab:prompts_eval "
                                      "for lab models or data, else the prompts of data.eval; null = none")
    num_prompts: int = doc(64, "use the first N of those prompts")
    max_new_tokens: int = doc(48, "response length limit when sampling")
    temperature: float = doc(1.0, "sampling temperature (1.0 keeps kl/mean an unbiased KL estimate)")
    gold: Judge = doc("auto", "score samples with the lab's gold judge (gold/mean): auto = for lab models or data; lab; none")
    text: str | None = doc("auto", "held-out text records for eval/perplexity; auto = lab:pretrain_eval for lab models or "
                                   "data, else the chosen responses of data.eval; null = none")
    text_examples: int = doc(128, "use at most this many held-out text records")
    seed: int = doc(1234, "sampling seed: every evaluation samples the same way, so curves are comparable")


@dataclass(frozen=True)
class DPOConfig:
    model: ModelConfig = section(ModelConfig, "policy to train; also the reference unless ref_model is set")
    ref_model: str | None = doc(None, "reference model (HF name or folder); null = the starting policy. Every loss_type "
                                      "but orpo, which has none")
    data: DPODataConfig = section(DPODataConfig, "comparisons")
    # LossType (the names of OBJECTIVES, below) is resolved when the config is read, after the module has run.
    loss_type: LossType = doc("sigmoid", ", ".join(f"{k} ({v.summary})" for k, v in DPO_LOSSES.items()) + ", orpo (no "
                              "reference model: NLL of chosen + orpo_lambda * odds-ratio loss). Setting an option the "
                              "loss does not read is an error")
    beta: float = doc(0.1, "KL strength: DPO/cDPO/hinge beta, IPO tau, SimPO reward scale (every loss_type but orpo)")
    label_smoothing: float = doc(0.0, "cdpo: probability that a preference label is flipped, in [0, 0.5)")
    simpo_gamma: float = doc(0.5, "simpo: target reward margin gamma")
    orpo_lambda: float = doc(0.1, "orpo: weight lambda of the odds-ratio term against the NLL of the chosen responses "
                                  "(paper and TRL: 0.1)")
    train: TrainConfig = section(TrainConfig, "optimisation")
    log: LogConfig = section(LogConfig, "logging, evaluation and checkpoints")
    sampling: DPOSampleConfig = section(DPOSampleConfig, "periodic sampling evaluation")
    monitor: MonitorConfig = section(MonitorConfig, "reward-hacking alarms during training and what they do",
                                     proxy_key="rewards/margin",
                                     helps={"proxy_key": "the optimised (proxy) reward metric: DPO's implicit reward margin"})


# ----------------------------------------------------------------------------- data


def comparison_pairs(records, mode: str) -> list[tuple[object, int, int]]:
    """(record, winner index, loser index) for every pair a ranking implies, or best vs worst."""
    out = []
    for r in records:
        pairs = r.pairs() if mode == "all" else [(r.ranking[0], r.ranking[-1])]
        out.extend((r, w, lo) for w, lo in pairs)
    return out


def encode_pair(tokenizer, record, chosen: str, rejected: str, max_length: int, min_prompt: int = 8) -> dict:
    """{"prompt", "chosen", "rejected"} ids; both responses end with EOS and share one prompt
    (a conversation's responses are its chat template's assistant turns, as in SFT).

    Over `max_length`, the prompt loses tokens from the left (down to `min_prompt`, keeping
    BOS), then each response is cut from the right (losing its EOS); `truncated` says so.
    """
    prompt, (c, r), truncated = encode_prompt_responses(tokenizer, record, (chosen, rejected), max_length,
                                                        min_prompt_tokens=min_prompt)
    return {"prompt": prompt, "chosen": c, "rejected": r, "truncated": truncated}


def encode_pairs(tokenizer, source: str, mode: str, max_length: int, limit: int | None = None) -> list[dict]:
    """Tokenised pairs of every comparison in `source`. Pairs whose two responses tokenise the
    same (duplicate samples) are dropped: their gradient is exactly zero, yet they would count
    in the loss normaliser."""
    records = read_records(source, "comparison")
    pairs = comparison_pairs(records, mode)
    encoded = [encode_pair(tokenizer, r, r.responses[w], r.responses[lo], max_length) for r, w, lo in pairs]
    return [p for p in encoded if p["chosen"] != p["rejected"]][: limit or None]


def pack_pairs(pairs: list[dict], pad_token_id: int, capacity: int | None) -> dict[str, torch.Tensor]:
    """The 2m sequences [chosen_1..m, rejected_1..m] of `pairs` as one batch (`models.packing.pack_sequences`)."""
    return pack_sequences([p["prompt"] for p in pairs] * 2, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs],
                          pad_token_id, capacity)


def packing_capacity(cfg: DPOConfig, models: list, pairs: list[dict], pad_token_id: int, is_main: bool,
                     stage: str = "dpo") -> int | None:
    """Row capacity of packed passes (data.max_length), or None: one padded row per sequence.
    Packing is used only where it is exact for every model (`models.packing.packing_capacity`:
    by architecture, then measured on the first pairs). Otherwise it falls back to padding, which
    gives the same log-probs for more compute, and says so in one line."""
    if not cfg.data.packing:
        return None

    def announce(why: str) -> None:
        if is_main:
            print(f"[{stage}] packing off: {why}; padding each sequence instead (same log-probs, more compute)")

    return packing.packing_capacity(models, cfg.data.max_length, pairs, functools.partial(pack_pairs, pad_token_id=pad_token_id),
                                    cfg.train.micro_batch_size, announce)


# ----------------------------------------------------------------------------- reference


@torch.no_grad()
def reference_logps(ref, pairs: list[dict], pad_token_id: int, batch_size: int, capacity: int | None,
                    accelerator=None) -> torch.Tensor:
    """(N, 2) reference log-probs [chosen, rejected] of every pair: each process scores its
    share (rank::world) and a sum-reduce assembles the full table on every process."""
    rank = accelerator.process_index if accelerator else 0
    world = accelerator.num_processes if accelerator else 1
    device = next(ref.parameters()).device
    was_training = ref.training
    ref.eval()
    table = torch.zeros(len(pairs), 2, dtype=torch.float32, device=device)
    mine = list(range(rank, len(pairs), world))
    for i in range(0, len(mine), batch_size):
        ids = mine[i : i + batch_size]
        logps, _ = sequence_logps(ref, to_device(pack_pairs([pairs[j] for j in ids], pad_token_id, capacity), device))
        table[ids] = logps.float().view(2, -1).T
    ref.train(was_training)
    if accelerator is not None and world > 1:
        table = accelerator.reduce(table, "sum")
    return table.cpu()


def reference_key(cfg: DPOConfig, tokenizer, ref_name: str) -> dict:
    """Everything besides the pairs' token ids that changes a reference log-prob: the reference
    (path, revision, and for a folder its weight files' sizes and times, so a retrained folder
    counts as new), dtype, packing (a model that ignores the position restarts leaks across packed
    sequences), lengths, truncation and selection (the data section but its file names), chat
    template and tokenizer. Used by DPO and KTO (whose data sections differ)."""
    return {"reference": ref_name, "revision": None if cfg.ref_model else cfg.model.revision,
            "weights": _folder_stamp(ref_name), "dtype": cfg.model.dtype, "packing": cfg.data.packing,
            "capacity": cfg.data.max_length if cfg.data.packing else None,
            "data": {k: v for k, v in asdict(cfg.data).items() if k not in ("train", "eval")},
            "chat_template": cfg.model.chat_template,
            "tokenizer": [tokenizer.name_or_path, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                          tokenizer.pad_token_id]}


def _folder_stamp(path: str) -> list | None:
    """(name, size, mtime) of a local model folder's config and weight files; None for a hub name."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    files = sorted(f for f in folder.iterdir() if f.name == "config.json" or f.suffix in (".safetensors", ".bin"))
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _fingerprint(key: dict, splits: dict[str, list[dict]]) -> str:
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode())
    for name, pairs in splits.items():
        h.update(name.encode())
        for p in pairs:
            h.update(json.dumps([p["prompt"], p["chosen"], p["rejected"]]).encode())
    return h.hexdigest()


def cached_reference_logps(s: TrainSession, load_ref, splits: dict[str, list[dict]], key: dict,
                           pad_token_id: int, batch_size: int, capacity: int | None) -> dict[str, torch.Tensor]:
    """Reference log-probs per split, from `ref_logps.safetensors` in the run folder when it was
    computed for the same `key` (`reference_key`) and the same pairs, else computed now and written there."""
    path = s.run.path / "ref_logps.safetensors"
    fingerprint = _fingerprint(key, splits)
    splits = {k: v for k, v in splits.items() if v}
    if path.exists():
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("fingerprint") == fingerprint:
                return {k: f.get_tensor(k) for k in splits}
    ref = load_ref()
    tables = {k: reference_logps(ref, v, pad_token_id, batch_size, capacity, s.accelerator) for k, v in splits.items()}
    if s.is_main:
        tmp = path.with_suffix(".tmp")
        save_file({k: t.contiguous() for k, t in tables.items()}, str(tmp), metadata={"fingerprint": fingerprint})
        follow_umask(tmp)
        tmp.replace(path)
    s.accelerator.wait_for_everyone()
    return tables


# ----------------------------------------------------------------------------- objectives


@dataclass(frozen=True)
class Totals:
    """Counts of a whole global batch (or eval set) that every micro-batch's share is divided by,
    so shares summed over micro-batches and processes are the global means."""

    pairs: int
    chosen_tokens: int

    @classmethod
    def of(cls, pairs: list[dict]) -> Totals:
        return cls(len(pairs), sum(len(p["chosen"]) for p in pairs))


def dpo_objective(cfg: DPOConfig, logps: torch.Tensor, lengths: torch.Tensor, ref: torch.Tensor | None,
                  totals: Totals) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`losses.dpo.preference_loss` of m pairs from their log-probs (2m,) [chosen, rejected], lengths
    (2m,) and reference table (m, 2) or None: (loss share, metric shares)."""
    m = logps.shape[0] // 2
    loss, metrics = preference_loss(
        cfg.loss_type, logps[:m], logps[m:], ref[:, 0] if ref is not None else None, ref[:, 1] if ref is not None else None,
        beta=cfg.beta, label_smoothing=cfg.label_smoothing, simpo_gamma=cfg.simpo_gamma,
        chosen_lengths=lengths[:m], rejected_lengths=lengths[m:], normalizer=totals.pairs,
    )
    # Policy log-probs: DPO can raise the margin while *both* fall; these show it.
    metrics["logps/chosen"], metrics["logps/rejected"] = logps[:m].detach().sum(), logps[m:].detach().sum()
    return loss, {k: metrics[k] / totals.pairs for k in METRIC_KEYS}


def orpo_objective(cfg: DPOConfig, logps: torch.Tensor, lengths: torch.Tensor, ref: torch.Tensor | None,
                   totals: Totals) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`losses.orpo.orpo_loss` of m pairs: NLL over the global batch's chosen tokens + lambda * the
    odds-ratio loss over its pairs. `ref` is unused (None): ORPO has no reference model."""
    m = logps.shape[0] // 2
    mean = logps / lengths.clamp(min=1)  # (2m,) length-normalised log p (paper eq. 2)
    # Each response as one entry: its mean token log-prob, weighted (masked) by its token count. The
    # masked sums and means orpo_loss takes over tokens are then exactly those over each response's tokens.
    loss, om = orpo_loss(mean[:m, None], lengths[:m, None], mean[m:, None], lengths[m:, None], lam=cfg.orpo_lambda,
                         token_normalizer=totals.chosen_tokens, pair_normalizer=totals.pairs)
    return loss, {"loss/nll": om["nll_sum"] / totals.chosen_tokens, "loss/or": om["or_sum"] / totals.pairs,
                  "rewards/margin": om["log_odds_ratio"] / totals.pairs,
                  "rewards/accuracy": om["rewards/accuracy"] / totals.pairs,
                  "logps/chosen": logps[:m].detach().sum() / totals.pairs,
                  "logps/rejected": logps[m:].detach().sum() / totals.pairs}


@dataclass(frozen=True)
class Objective:
    """What the pair loop optimises: its loss (`dpo_objective`, `orpo_objective`), logged metrics,
    whether it has a reference model at all (ORPO has none: not even for kl/mean), and the config
    options it reads (`check_options` rejects any other set away from its default)."""

    loss: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
    loss_key: str
    metric_keys: tuple[str, ...]
    has_reference: bool
    options: tuple[str, ...]


# The one registry of loss_type names: each DPO_LOSSES entry (its own options, plus the reference
# model every one of them reads: for the loss, or for kl/mean when reference-free) and ORPO.
OBJECTIVES = {**{k: Objective(dpo_objective, "loss/dpo", METRIC_KEYS, has_reference=True, options=(*v.options, "ref_model"))
                 for k, v in DPO_LOSSES.items()},
              "orpo": Objective(orpo_objective, "loss/orpo", ORPO_METRIC_KEYS, has_reference=False, options=("orpo_lambda",))}
LossType = Literal[tuple(OBJECTIVES)]
LOSS_OPTIONS = tuple(dict.fromkeys(o for obj in OBJECTIVES.values() for o in obj.options))  # every option some loss reads


def _micro_loss(cfg: DPOConfig, model, pairs: list[dict], ref: torch.Tensor | None, pad_token_id: int, device,
                totals: Totals):
    capacity = cfg.data.max_length if cfg.data.packing else None
    logps, lengths = sequence_logps(model, to_device(pack_pairs(pairs, pad_token_id, capacity), device))
    return OBJECTIVES[cfg.loss_type].loss(cfg, logps, lengths, ref.to(device) if ref is not None else None, totals)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def pair_eval(cfg: DPOConfig, model, pairs: list[dict], ref_table: torch.Tensor | None, pad_token_id: int, s: TrainSession) -> dict[str, float]:
    """Loss, accuracy and margin on held-out pairs: the objective of the whole set as one global
    batch (all processes, summed)."""
    was_training = model.training
    model.eval()
    keys = OBJECTIVES[cfg.loss_type].metric_keys
    totals = Totals.of(pairs)
    sums = torch.zeros(len(keys) + 1, device=s.device)  # loss, metrics
    mine = list(range(s.rank, len(pairs), s.world_size))
    with gathered(model):  # sharded (train.sharding=fsdp): uneven shares forward on gathered weights
        for i in range(0, len(mine), cfg.train.micro_batch_size):
            ids = mine[i : i + cfg.train.micro_batch_size]
            loss, m = _micro_loss(cfg, model, [pairs[j] for j in ids], ref_table[ids] if ref_table is not None else None,
                                  pad_token_id, s.device, totals)
            sums += torch.stack([loss, *(m[k] for k in keys)])
    model.train(was_training)
    sums = s.accelerator.reduce(sums, "sum") if s.world_size > 1 else sums
    mean = dict(zip(("loss", *keys), sums.tolist(), strict=True))
    return {"eval/loss": mean["loss"], "eval/accuracy": mean["rewards/accuracy"], "eval/margin": mean["rewards/margin"]}


@dataclass(frozen=True)
class SampledEval:
    """What the periodic sampling evaluation runs on (decided by `evaluate.held_out`)."""

    heldout: HeldOut  # its provenance goes into run_complete.json
    prompts: list  # prompt records
    text: list[dict]  # held-out text features for eval/perplexity

    def config(self, cfg):
        """`cfg` with sampling.gold resolved to whether a held-out judge is used (`sample_eval` reads it)."""
        return replace(cfg, sampling=replace(cfg.sampling, gold=self.heldout.judge is not None))


def sampled_eval_inputs(stage: str, cfg, tokenizer, is_main: bool, what: str, own_records: Callable[[], list],
                        own_text: list[tuple[list[int], list[int]]], own_text_what: str) -> SampledEval:
    """The sampling evaluation's prompts and text (and judge) for a run with `cfg.sampling` and
    `cfg.data` (train, eval). Off the lab, `auto` falls back to the held-out split: the distinct
    prompts of `own_records()` (the data.eval records, `what` they are) and `own_text`: (prompt ids,
    response ids) of its good responses (`own_text_what`), the response scored."""
    sc = cfg.sampling
    own = f"held-out {what} {cfg.data.eval}" if cfg.data.eval else None
    heldout = held_out(stage, cfg.model.name_or_path, [cfg.data.train, cfg.data.eval], judge=sc.gold,
                       prompts=sc.prompts, text=sc.text, own_prompts=own and f"prompts of {own}",
                       own_text=own and f"{own_text_what} of {own}", quiet=not is_main,
                       keys={"judge": "sampling.gold", "prompts": "sampling.prompts", "text": "sampling.text"})
    prompts, text = [], []
    if heldout.prompts:
        records = read_records(heldout.prompts.spec, "prompt") if heldout.prompts.spec else own_records()
        prompts = list({r.prompt: r for r in records}.values())[: sc.num_prompts]
    if heldout.text and heldout.text.spec:
        text = text_features(tokenizer, heldout.text.spec, cfg.data.max_length, sc.text_examples)
    elif heldout.text:
        text = [{"input_ids": p + r, "labels": [-100] * len(p) + r} for p, r in own_text[: sc.text_examples]]
    return SampledEval(heldout, prompts, text)


def sample_eval(cfg: DPOConfig, policy, ref, tokenizer, prompts: list, text_feats: list[dict],
                s: TrainSession) -> dict[str, float]:
    """`evaluate.evaluate_policy` on the eval prompts (records), split over processes: kl/mean vs the
    reference, length, EOS rate, eval/perplexity of held-out text, and gold/mean with the held-out
    judge (`cfg.sampling.gold` is resolved by `run` to a bool: the lab's gold judge or none)."""
    sc = cfg.sampling
    params = SamplingParams(max_new_tokens=sc.max_new_tokens, temperature=sc.temperature)
    metrics, _ = evaluate_policy(policy, tokenizer, prompts, params, text_feats or None, judge=sc.gold is True,
                                 seed=sc.seed, ref=ref, accelerator=s.accelerator)
    return metrics


# ----------------------------------------------------------------------------- training


def check_options(cfg: DPOConfig) -> None:
    """A loss option set away from its default (the config class's) that the chosen loss does not
    read is a mistake (a misspelt loss_type, or an option meant for another loss): say so."""
    reads = OBJECTIVES[cfg.loss_type].options
    defaults = {f.name: f.default for f in fields(type(cfg))}
    for key in LOSS_OPTIONS:
        if key not in reads and getattr(cfg, key) != defaults[key]:
            raise ConfigError(f"config key '{key}' is set ({getattr(cfg, key)!r}) but loss_type '{cfg.loss_type}' does "
                              f"not use it; '{cfg.loss_type}' reads {', '.join(reads)}")


def _check(cfg: DPOConfig) -> None:
    if cfg.loss_type not in OBJECTIVES:  # pragma: no cover - the config's Literal already checks
        raise ValueError(cfg.loss_type)
    check_options(cfg)
    if cfg.beta <= 0:
        raise ConfigError(f"config key 'beta': must be positive, got {cfg.beta}")
    if not 0.0 <= cfg.label_smoothing < 0.5:
        raise ConfigError(f"config key 'label_smoothing': must be in [0, 0.5), got {cfg.label_smoothing}")
    if cfg.orpo_lambda < 0:
        raise ConfigError(f"config key 'orpo_lambda': must be >= 0, got {cfg.orpo_lambda}")


def run(cfg: DPOConfig, out: str | Path, resume: bool = False, stage: str = "dpo") -> Path:
    _check(cfg)
    objective = OBJECTIVES[cfg.loss_type]
    s = TrainSession(cfg, out, stage=stage, resume=resume)
    tokenizer = load_tokenizer(cfg.model)
    pad = tokenizer.pad_token_id
    # Read and validate all data before any training starts.
    train_pairs = encode_pairs(tokenizer, cfg.data.train, cfg.data.pairs, cfg.data.max_length)
    eval_pairs = encode_pairs(tokenizer, cfg.data.eval, cfg.data.pairs, cfg.data.max_length, cfg.data.eval_pairs) if cfg.data.eval else []
    ev = sampled_eval_inputs(stage, cfg, tokenizer, s.is_main, "comparisons", lambda: read_records(cfg.data.eval, "comparison"),
                             [(p["prompt"], p["chosen"]) for p in eval_pairs], "chosen responses")
    eval_cfg = ev.config(cfg)
    truncated = sum(p["truncated"] for p in train_pairs)
    if truncated and s.is_main:
        print(f"[{stage}] note: {truncated}/{len(train_pairs)} pairs truncated to {cfg.data.max_length} tokens")

    plan = BatchPlan(len(train_pairs), cfg.train.batch_size, cfg.train.micro_batch_size, s.world_size)
    total = plan.total_steps(cfg.train.epochs, cfg.train.max_steps)
    ref_name = resolve_model_path(cfg.ref_model or cfg.model.name_or_path)

    model = load_policy(cfg.model)
    disable_dropout(model)  # policy and reference log-probs must come from the same function

    @functools.cache
    def load_ref():  # LoRA: the policy with adapters off, no second copy of the weights
        return load_reference(cfg.model, model.to(s.device), cfg.ref_model).to(s.device)

    # Reference log-probs once, before training (and before resume loads trained weights).
    uses_ref = objective.has_reference and cfg.loss_type not in REFERENCE_FREE
    samples_kl = objective.has_reference and bool(ev.prompts)  # kl/mean needs the reference model itself
    if uses_ref or samples_kl:
        load_ref()  # loaded (so checked) before the run folder is touched
    # A separate reference is checked for packing too; a LoRA one is the policy's own base model.
    capacity = packing_capacity(cfg, [model.to(s.device), *([load_ref()] if uses_ref and cfg.ref_model else [])],
                                train_pairs, pad, s.is_main, stage)
    if capacity is None and cfg.data.packing:  # fell back: every pass pads, and the reference cache key says so
        cfg = replace(cfg, data=replace(cfg.data, packing=False))
    s.prepare()  # all inputs are validated: the run folder (and its reference cache) may be written from here
    ref_tables = cached_reference_logps(s, load_ref, {"train": train_pairs, "eval": eval_pairs},
                                        reference_key(cfg, tokenizer, ref_name), pad,
                                        cfg.train.micro_batch_size * 2, capacity) if uses_ref else {}
    if not samples_kl:  # the table is all training needs: free the reference's weights before the optimizer state
        load_ref.cache_clear()
    ref_model = load_ref() if samples_kl else None
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, total)
    start, _ = s.resume({"policy": model}, optimizer, scheduler)
    watch = Watch(s, cfg.monitor, model, tokenizer, start)
    model, optimizer = s.accelerator.prepare(model, optimizer)
    s.shard_frozen(ref_model)  # train.sharding=fsdp: a separate reference (kept for eval KL) sharded too
    model.train()

    def evaluate(step: int) -> dict[str, float]:
        metrics = pair_eval(cfg, model, eval_pairs, ref_tables.get("eval"), pad, s) if eval_pairs else {}
        unwrapped = s.accelerator.unwrap_model(model)
        metrics.update(sample_eval(eval_cfg, unwrapped, ref_model, tokenizer, ev.prompts, ev.text, s))
        return metrics

    bar = s.progress(total, start)
    train_ref = ref_tables.get("train")
    keys = objective.metric_keys
    final_eval: dict[str, float] = {}
    for step in range(start, total):
        batch_ids = plan.global_batch(step, cfg.train.seed)
        micro, totals = list(plan.micro_batches(plan.shard(batch_ids, s.rank))), Totals.of([train_pairs[i] for i in batch_ids])

        def loss_fn(ids, totals=totals):  # this micro-batch's share of the global batch's objective
            return _micro_loss(cfg, model, [train_pairs[i] for i in ids], train_ref[ids] if uses_ref else None,
                               pad, s.device, totals)

        res = train_step(s, [model], optimizer, scheduler, micro, loss_fn, cfg.train.max_grad_norm)
        sums = torch.stack([res.loss, *(res.sums[k] for k in keys)])
        sums = (s.accelerator.reduce(sums, "sum") if s.world_size > 1 else sums).tolist()
        metrics = {objective.loss_key: sums[0], **dict(zip(keys, sums[1:], strict=True)), "train/lr": scheduler.get_last_lr()[0]}
        if res.grad_norms:
            metrics["train/grad_norm"] = res.grad_norms[0]
        if (cfg.log.eval_every and (step + 1) % cfg.log.eval_every == 0) or step + 1 == total:
            final_eval = evaluate(step + 1)
            metrics.update(final_eval)
        s.log(step + 1, metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics[objective.loss_key]:.3f}", acc=f"{metrics['rewards/accuracy']:.2f}")
        if watch.after_log(step + 1, metrics, model):
            break
        s.maybe_save(step + 1, total, {"policy": model}, optimizer, scheduler, tokenizer=tokenizer)
    bar.close()
    summary = watch.finish(model)  # keep_best: final/ = the best step's policy
    strength = {k: getattr(cfg, k) for k in objective.options if k != "ref_model"}
    summary = {"steps": summary.get("stopped_at", total), "pairs": len(train_pairs), "loss_type": cfg.loss_type,
               **strength, **final_eval, **summary, "lab": from_lab(cfg.model.name_or_path), **ev.heldout.provenance()}
    return s.finish({"policy": model}, tokenizer, primary="policy", summary=summary)
