"""Reward model training: Bradley–Terry on K-wise rankings (InstructGPT §3.5), then normalisation.

    for each member m of the ensemble (seed + m; optionally a bootstrap resample of the data):
        for each step: global batch of *prompts* -> shard per process -> micro-batches
            score every response of the micro-batch once                  r (N,)
            loss = Σ_prompts mean_{(w,l) of the prompt} −log σ(r_w − r_l − margin) [+ η (r_w + r_l)²]
                   / (prompts in the whole global batch)
            backward (accumulate), clip, AdamW step, schedule step
        every eval_every: held-out pairwise accuracy, margin, calibration (ECE), gold agreement (lab)
        final/: HF AutoModelForSequenceClassification (num_labels=1) + tokenizer
    normalise: sample the SFT policy on held-out prompts once; per member, shift (and scale) so
        those responses score mean 0, std 1 -> reward_normalization.json
    ensemble (members > 1): final/ = member-i/ folders + ensemble.json manifest

LoRA (`model.lora.enabled`): peft SEQ_CLS adapters on the backbone and a fully trained copy of the
scalar head are the only trainable parameters; checkpoints hold them (reward/adapter/), final/ is
the merged plain classifier (+ final/adapter/), so normalisation and scoring never need peft.
Ensemble members train one after another, each on its own copy of the base with its own adapters.

Packing (`data.packing`, default on): each micro-batch's responses are packed into rows of
max_length, kept apart by a block-diagonal causal mask (`models.packing`), and each reward is read
at its sequence's last token: the rewards of one padded row per response to float32 rounding, with
almost no compute on padding (35-41% of the positions on the lab's comparisons when padded). Where
the model cannot keep sequences apart (`models.packing.packing_problem`, or the check on the first
comparisons fails), one line says so and each response gets a right-padded row, in micro-batches
cut from the shard sorted by length.

Why prompts, not pairs, are the unit: a prompt's C(K,2) pairs share its K forward passes and are
strongly correlated; treating them as independent examples overfits (InstructGPT §3.5). So the
global batch is a set of prompts (`train.batch_size` prompts), each prompt weighs the same, and a
micro-batch of `train.micro_batch_size` prompts runs K× as many rows through the model.

Why one file (~490 lines): training a member, normalising it and assembling the ensemble are the
three stages of the box above and share the config and the held-out split; the loss maths is in
`losses.bradley_terry`, packed rows in `models.packing`, ensemble scoring in `models.ensemble`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from rlhfkit.config import ConfigError, LogConfig, ModelConfig, TrainConfig, doc, section
from rlhfkit.data import Comparison, read_jsonl, read_records, write_jsonl
from rlhfkit.evaluate import Judge, from_lab, held_out
from rlhfkit.losses.bradley_terry import kwise_loss, pairwise_metrics
from rlhfkit.models.ensemble import aggregate_members, write_ensemble
from rlhfkit.models.loading import load_tokenizer, publish_folder
from rlhfkit.models.packing import (
    pack_rows,
    packing_capacity,
    reward_measure,
    sequence_rewards,
    to_device,
)
from rlhfkit.models.reward import (
    NORMALIZATION_FILE,
    build_reward_model,
    collate_rows,
    context_length,
    encode_scored,
    forward_rewards,
    load_reward_model,
    write_normalization,
)
from rlhfkit.train.batches import BatchPlan
from rlhfkit.train.optim import build_optimizer, build_scheduler
from rlhfkit.train.run_dir import MetricsLog, RunDir
from rlhfkit.train.session import TrainSession
from rlhfkit.train.step import train_step


@dataclass(frozen=True)
class RewardDataConfig:
    train: str = doc("runs/compare/comparisons.jsonl", "comparisons (K-wise rankings or chosen/rejected): JSONL/JSON/Parquet, dataset folder, lab:NAME")
    eval: str | None = doc(None, "held-out comparisons; null = hold out eval_fraction of train")
    eval_fraction: float = doc(0.1, "share of train held out for evaluation when eval is null (0 = no evaluation)")
    limit: int = doc(0, "use only the first N training comparisons (prompts); 0 = all")
    max_length: int = doc(128, "max tokens of prompt + response (prompt truncated from the left first; capped at the model's context)")
    packing: bool = doc(True, "pack each micro-batch's responses into rows of max_length, kept apart by a block-diagonal "
                              "attention mask (the same rewards, less padding); false, or where the model cannot keep them "
                              "apart: one padded row per response, micro-batches of prompts of similar lengths")
    gold: Judge = doc("auto", "report agreement with the lab's gold judge: auto = when the model, the data or the labels' annotators are the lab's; lab; none")


@dataclass(frozen=True)
class RewardLossConfig:
    type: Literal["bradley_terry", "hinge"] = doc("bradley_terry", "pair loss: bradley_terry (−log σ(Δ)) or hinge (max(0, 1 − Δ))")
    margin: float = doc(0.0, "constant margin m in −log σ(r_w − r_l − m) (Llama 2)")
    margin_from_scores: float = doc(0.0, "add this × (score_w − score_l) to the margin when records carry annotator scores")
    center_coef: float = doc(0.0, "reward-centering penalty η·(r_w + r_l)² (Eisenstein et al. 2023); e.g. 0.01")
    soft_labels: bool = doc(True, "use a record's soft_label p as the target probability instead of 1")
    label_smoothing: float = doc(0.0, "hard labels become 1 − ε (robust to flipped labels)")


@dataclass(frozen=True)
class NormalizeConfig:
    source: Literal["policy", "eval_data", "none"] = doc("policy", "what defines reward 0: fresh samples of the SFT policy, the held-out comparisons' responses, or nothing")
    policy: str | None = doc(None, "policy to sample (HF name or folder); null = the RM's starting model (the SFT policy)")
    prompts: str | None = doc("auto", "held-out prompts to sample for normalisation; auto = lab:prompts_eval for lab models or "
                                      "data, else the held-out comparisons' prompts (none held out: no normalisation)")
    num_prompts: int = doc(128, "use the first N of those prompts")
    max_new_tokens: int = doc(64, "response length limit when sampling")
    temperature: float = doc(1.0, "sampling temperature")
    scale: bool = doc(True, "also divide by the std (mean 0, std 1); false = shift only")
    seed: int = doc(1234, "sampling seed")


@dataclass(frozen=True)
class EnsembleConfig:
    members: int = doc(1, "number of reward models; >1 writes an ensemble (members differ in seed)")
    bootstrap: bool = doc(False, "each member trains on a bootstrap resample (with replacement) of the comparisons")


@dataclass(frozen=True)
class RewardConfig:
    model: ModelConfig = section(ModelConfig, "backbone to start from (usually the SFT policy); its LM head is replaced by a scalar head")
    data: RewardDataConfig = section(RewardDataConfig, "comparisons")
    loss: RewardLossConfig = section(RewardLossConfig, "Bradley–Terry loss and its extensions")
    normalize: NormalizeConfig = section(NormalizeConfig, "post-training shift/scale of the reward")
    ensemble: EnsembleConfig = section(EnsembleConfig, "ensembles (--ensemble N)")
    # Defaults measured on the lab (benchmarks/rm_curve.py): a tiny backbone first collapses to a
    # constant reward (loss ln 2) and needs a high lr and ~100+ steps to learn features; for
    # pretrained LMs of 100M+ parameters use lr ~1e-5 and 1 epoch (InstructGPT, Stiennon et al.).
    train: TrainConfig = section(TrainConfig, "optimisation; batch sizes count prompts (each with its K responses)",
                                 lr=2e-3, batch_size=16, micro_batch_size=16, epochs=3.0)
    log: LogConfig = section(LogConfig, "logging, evaluation and checkpoints")


# ----------------------------------------------------------------------------- data


def comparison_features(tokenizer, records: list[Comparison], cfg: RewardConfig, max_length: int) -> list[dict]:
    """Per comparison: its K token rows and its C(K,2) pairs with targets and margins."""
    feats = []
    for rec in records:
        rows = [encode_scored(tokenizer, rec, resp, max_length) for resp in rec.responses]
        pairs = rec.pairs()
        hard = 1.0 - cfg.loss.label_smoothing
        # soft_label is P(responses[ranking[0]] ≻ responses[ranking[1]]), defined for K = 2.
        target = rec.soft_label if (cfg.loss.soft_labels and rec.soft_label is not None) else hard
        margins = []
        for w, lo in pairs:
            m = cfg.loss.margin
            if cfg.loss.margin_from_scores and rec.scores is not None:
                m += cfg.loss.margin_from_scores * (rec.scores[w] - rec.scores[lo])
            margins.append(m)
        feats.append({"rows": rows, "winners": [w for w, _ in pairs], "losers": [lo for _, lo in pairs],
                      "targets": [target] * len(pairs), "margins": margins})
    return feats


def collate_comparisons(feats: list[dict], pad_token_id: int, capacity: int | None = None) -> dict:
    """The K rows of each comparison, flattened, as one `models.packing.pack_rows` batch (rows of at
    most `capacity` tokens, or one right-padded row each when None; `sequence_rewards` reads it),
    with the pairs: winner and loser indices into the flat rows, group (comparison), target, margin."""
    rows, winners, losers, groups, targets, margins = [], [], [], [], [], []
    for g, f in enumerate(feats):
        offset = len(rows)
        rows.extend(f["rows"])
        winners += [offset + w for w in f["winners"]]
        losers += [offset + lo for lo in f["losers"]]
        groups += [g] * len(f["winners"])
        targets += f["targets"]
        margins += f["margins"]
    return {**pack_rows(rows, None, pad_token_id, capacity), "winners": torch.tensor(winners), "losers": torch.tensor(losers),
            "groups": torch.tensor(groups), "targets": torch.tensor(targets), "margins": torch.tensor(margins)}


def micro_batches(plan: BatchPlan, mine: list[int], feats: list[dict], packed: bool) -> list[list[int]]:
    """This process's micro-batches of comparisons from its shard `mine`. Padded rows: cut from the
    shard sorted by its longest response, so each micro-batch pads to a similar length (the step's
    loss is a sum over prompts / the global prompt count: the same for any grouping, to float32
    rounding). Packed rows leave little padding in any order: BatchPlan's order is kept."""
    if not packed:
        mine = sorted(mine, key=lambda i: max(len(r) for r in feats[i]["rows"]))
    return list(plan.micro_batches(mine))


def reward_packing(cfg: RewardConfig, model, feats: list[dict], pad_token_id: int, max_length: int, is_main: bool) -> int | None:
    """Row capacity of the packed passes (max_length), or None: one padded row per response.
    Packed only where exact for `model` (`models.packing.packing_capacity` with the reward's
    float32 bound, `reward_measure`, checked on the first comparisons as training packs them)."""
    if not cfg.data.packing:
        return None

    def announce(why: str) -> None:
        if is_main:
            print(f"[reward] packing off: {why}; one padded row per response instead (same rewards, more compute)")

    return packing_capacity([model], max_length, feats, functools.partial(collate_comparisons, pad_token_id=pad_token_id),
                            cfg.train.micro_batch_size, announce, measure=reward_measure)


def split_data(cfg: RewardConfig) -> tuple[list[Comparison], list[Comparison]]:
    """Train and held-out comparisons (the held-out split does not depend on the member seed)."""
    train = read_records(cfg.data.train, "comparison")
    if cfg.data.eval:
        held = read_records(cfg.data.eval, "comparison")
    elif cfg.data.eval_fraction > 0:
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
        n_eval = max(1, int(round(cfg.data.eval_fraction * len(train))))
        held, train = [train[i] for i in perm[:n_eval]], [train[i] for i in sorted(perm[n_eval:])]
    else:
        held = []
    if cfg.data.limit:
        train = train[: cfg.data.limit]
    return train, held


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def score_rows(model, rows: list[list[int]], pad_token_id: int, batch_size: int, device) -> torch.Tensor:
    """Raw rewards of token rows (N,), batched by length; order preserved."""
    was_training = model.training
    model.eval()
    out = torch.zeros(len(rows))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        ids, mask = collate_rows([rows[j] for j in idx], pad_token_id)
        out[idx] = forward_rewards(model, ids.to(device), mask.to(device)).float().cpu()
    model.train(was_training)
    return out


class HeldOut:
    """Held-out comparisons with everything that does not change during training precomputed:
    the flat rows, the labelled pairs, and (lab) the gold preference of every pair and the
    annotators' own agreement with it — the ceiling for an RM trained on their labels. `judge`:
    a reward source spec (e.g. lab:gold) whose order the "gold" agreement is measured against."""

    def __init__(self, records: list[Comparison], feats: list[dict], judge=None):
        self.rows, self.winners, self.losers, self.per_record = [], [], [], []
        for f in feats:
            off = len(self.rows)
            self.rows.extend(f["rows"])
            self.winners += [off + w for w in f["winners"]]
            self.losers += [off + lo for lo in f["losers"]]
            self.per_record.append(len(f["rows"]))
        self.gold_sign = None
        if judge is not None and records:  # a held-out judge (reward source): lab:gold on the lab
            from rlhfkit.rewards import build_reward

            prompts = [r for r in records for _ in r.responses]
            g = build_reward(judge)(prompts, [x for r in records for x in r.responses]).rewards.double()
            diff = g[self.winners] - g[self.losers]
            self.gold_sign = torch.sign(diff)  # +1: gold agrees with the label, −1: disagrees, 0: tie
            decided = self.gold_sign != 0
            self.annotator_agreement = (self.gold_sign[decided] > 0).double().mean().item()

    def metrics(self, rewards: torch.Tensor, bins: int = 5) -> dict:
        """Pairwise accuracy/margin/ECE of raw rewards (N,) against the labels, and gold agreement."""
        delta = rewards[self.winners] - rewards[self.losers]
        m = pairwise_metrics(delta, n_bins=bins)
        out = {"eval/accuracy": m["accuracy"], "eval/margin": m["margin"], "eval/ece": m["ece"],
               "eval/pairs": m["pairs"], "calibration": m["calibration"]}
        if self.gold_sign is not None:
            decided = self.gold_sign != 0
            # RM order vs gold order on the same pairs; the annotators' rate is the noise ceiling.
            rm_sign = torch.sign(delta.double())
            agree = (rm_sign[decided] == self.gold_sign[decided]).double() + 0.5 * (rm_sign[decided] == 0).double()
            out["gold/agreement"] = agree.mean().item()
            out["gold/annotator_agreement"] = self.annotator_agreement
            out["gold/of_ceiling"] = out["gold/agreement"] / max(self.annotator_agreement, 1e-9)
            out["gold/pairs"] = int(decided.sum())
        return out


# ----------------------------------------------------------------------------- one reward model


def train_one(cfg: RewardConfig, out: Path, train_records: list[Comparison], held: HeldOut | None,
              tokenizer, max_length: int, resume: bool, provenance: dict | None = None) -> Path:
    """Train a single RM into `out` (a run folder); returns its final/ folder. `provenance` (what
    the held-out numbers are measured on) goes into run_complete.json."""
    s = TrainSession(cfg, out, stage="reward", resume=resume)
    seed = cfg.train.seed
    feats = comparison_features(tokenizer, train_records, cfg, max_length)
    plan = BatchPlan(len(feats), cfg.train.batch_size, cfg.train.micro_batch_size, s.world_size)
    total = plan.total_steps(cfg.train.epochs, cfg.train.max_steps)
    model = build_reward_model(cfg.model, tokenizer.pad_token_id, seed=seed)  # dropout off
    capacity = reward_packing(cfg, model.to(s.device), feats, tokenizer.pad_token_id, max_length, s.is_main)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, total)
    start, _ = s.resume({"reward": model}, optimizer, scheduler)
    model, optimizer = s.accelerator.prepare(model, optimizer)
    model.train()
    pad = tokenizer.pad_token_id

    bar = s.progress(total, start)
    last_eval: dict | None = None
    for step in range(start, total):
        batch_ids = plan.global_batch(step, seed)
        normalizer = len(batch_ids)  # prompts in the global batch: each prompt weighs 1/normalizer
        micro = micro_batches(plan, plan.shard(batch_ids, s.rank), feats, capacity is not None)

        def loss_fn(ids, normalizer=normalizer):  # this micro-batch's share of the mean over global prompts
            b = to_device(collate_comparisons([feats[i] for i in ids], pad, capacity), s.device)
            rewards = sequence_rewards(model, b)  # (N,) one per response, in the flat rows' order
            return kwise_loss(rewards, b["winners"], b["losers"], b["groups"], b["targets"], b["margins"],
                              cfg.loss.center_coef, normalizer, cfg.loss.type)

        res = train_step(s, [model], optimizer, scheduler, micro, loss_fn, cfg.train.max_grad_norm)
        sums, loss_sum = res.sums, res.loss
        tot = {k: s.accelerator.reduce(v.detach().float(), "sum").item() for k, v in sums.items()}
        mean = tot["reward_sum"] / tot["responses"]
        metrics = {
            "loss/reward": s.accelerator.reduce(loss_sum, "sum").item(),
            "reward/accuracy": tot["correct"] / tot["pairs"],
            "reward/margin": tot["margin_sum"] / tot["pairs"],
            "reward/mean": mean,
            "reward/std": max(tot["reward_sq_sum"] / tot["responses"] - mean**2, 0.0) ** 0.5,
            "train/pairs": tot["pairs"],
            "train/lr": scheduler.get_last_lr()[0],
        }
        if res.grad_norms:
            metrics["train/grad_norm"] = res.grad_norms[0]
        every = cfg.log.eval_every
        if held is not None and held.rows and ((every and (step + 1) % every == 0) or step + 1 == total):
            last_eval = held.metrics(score_rows(model, held.rows, pad, 4 * cfg.train.micro_batch_size, s.device))
            metrics.update({k: v for k, v in last_eval.items() if k != "calibration"})
        s.log(step + 1, metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss/reward']:.3f}", acc=f"{metrics['reward/accuracy']:.2f}")
        s.maybe_save(step + 1, total, {"reward": model}, optimizer, scheduler, tokenizer=tokenizer)
    bar.close()
    summary: dict = {"steps": total, "train_comparisons": len(feats), **(provenance or {})}
    if held is not None and held.rows:
        ev = last_eval or held.metrics(score_rows(model, held.rows, pad, 4 * cfg.train.micro_batch_size, s.device))
        summary.update({k.replace("/", "_"): v for k, v in ev.items() if k != "calibration"})
        if s.is_main:
            (Path(out) / "reward_eval.json").write_text(json.dumps(ev, indent=2))
    return s.finish({"reward": model}, tokenizer, primary="reward", summary=summary)


# ----------------------------------------------------------------------------- normalisation


def normalization_samples(cfg: RewardConfig, out: Path, held_records: list[Comparison], prompts: list) -> list[dict]:
    """(prompt, response) pairs that define reward 0; sampled once (from `prompts`, prompt records)
    and cached in the run folder."""
    cache = out / "normalization_samples.jsonl"
    if cache.exists():
        return read_jsonl(cache)
    if cfg.normalize.source == "eval_data":
        rows = [{"prompt": r.prompt, "response": resp} for r in held_records for resp in r.responses]
    else:
        from rlhfkit.data import encode_prompt
        from rlhfkit.models.loading import load_policy
        from rlhfkit.rollout import SamplingParams, generate

        mcfg = dataclasses.replace(cfg.model, name_or_path=cfg.normalize.policy or cfg.model.name_or_path,
                                   gradient_checkpointing=False)
        policy, ptok = load_policy(mcfg), load_tokenizer(mcfg)
        prompts = prompts[: cfg.normalize.num_prompts]
        params = SamplingParams(max_new_tokens=cfg.normalize.max_new_tokens, temperature=cfg.normalize.temperature)
        samples = generate(policy, ptok, [encode_prompt(ptok, p) for p in prompts], params, generator_seed=cfg.normalize.seed)
        rows = [{"prompt": p.prompt, "response": smp.text} for p, smp in zip(prompts, samples, strict=True)]
        del policy
    if not rows:
        raise ValueError("normalize: no responses to normalise on (no held-out comparisons?); set normalize.source=policy or none")
    write_jsonl(cache, rows)
    return rows


def normalize_folder(folder: Path, samples: list[dict], cfg: RewardConfig, max_length: int, prompts_on: str | None) -> dict:
    """Write reward_normalization.json: shift = mean raw reward, scale = its std (or 1)."""
    rm = load_reward_model(folder, normalize=False)
    raw = rm.score([r["prompt"] for r in samples], [r["response"] for r in samples]).rewards.double()
    mean, std = raw.mean().item(), raw.std(correction=0).item()
    scale = std if (cfg.normalize.scale and std > 1e-6) else 1.0
    stats = {"source": cfg.normalize.source, "samples": len(samples), "raw_mean": mean, "raw_std": std,
             "policy": cfg.normalize.policy or cfg.model.name_or_path, "prompts": prompts_on}
    write_normalization(folder, mean, scale, max_length, stats)
    return stats


# ----------------------------------------------------------------------------- entry point


def _is_done(run: Path, norm_source: str) -> bool:
    final = run / "final"
    return (final / "run_complete.json").exists() and (norm_source == "none" or (final / NORMALIZATION_FILE).exists())



def run(cfg: RewardConfig, out: str | Path, resume: bool = False) -> Path:
    out = Path(out)
    n = cfg.ensemble.members
    if n < 1:
        raise ConfigError(f"config key 'ensemble.members': expected at least 1, got {n}")
    tokenizer = load_tokenizer(cfg.model)
    from transformers import AutoConfig

    from rlhfkit.models.loading import from_pretrained

    backbone = from_pretrained(AutoConfig, cfg.model.name_or_path, revision=cfg.model.revision,
                               trust_remote_code=cfg.model.trust_remote_code)
    max_length = min(cfg.data.max_length, context_length(backbone))
    # Read and validate all data before any training starts.
    train_records, held_records = split_data(cfg)
    held_feats = comparison_features(tokenizer, held_records, cfg, max_length)
    # What held-out numbers are measured on: gold agreement (lab), normalisation prompts.
    lab_labels = bool(held_records) and all((r.annotator or "").startswith(("simulated", "lab")) for r in held_records)
    own = (f"held-out comparisons {cfg.data.eval or f'({cfg.data.eval_fraction:g} of {cfg.data.train})'}"
           if held_records else None)
    sampled = cfg.normalize.source == "policy"
    heldout = held_out("reward", cfg.model.name_or_path, [cfg.data.train, cfg.data.eval], judge=cfg.data.gold,
                       prompts=cfg.normalize.prompts if sampled else None, own_prompts=own and f"prompts of {own}",
                       lab_data=lab_labels, quiet=not _is_main(), keys={"judge": "data.gold", "prompts": "normalize.prompts"})
    held = HeldOut(held_records, held_feats, heldout.judge) if held_records else None
    norm_prompts = []
    if sampled and heldout.prompts:  # read now: bad prompts stop the run before training
        norm_prompts = (read_records(heldout.prompts.spec, "prompt") if heldout.prompts.spec
                        else list({r.prompt: r for r in held_records}.values()))
    # No prompts to sample: no normalisation (held_out printed why); config.yaml keeps the setting.
    norm_source = "none" if sampled and not heldout.prompts else cfg.normalize.source
    provenance = {"lab": from_lab(cfg.model.name_or_path), **heldout.provenance(),
                  # written into final/ after it is published: complete only once it is there (RunDir.is_complete)
                  "needs": [NORMALIZATION_FILE] if norm_source != "none" else []}
    if "eval/prompts_on" in provenance:
        provenance["normalize/prompts_on"] = provenance.pop("eval/prompts_on")

    runs = [out] if n == 1 else [out / "members" / f"member-{i}" for i in range(n)]
    if n > 1:
        BatchPlan(len(train_records), cfg.train.batch_size, cfg.train.micro_batch_size, _state().num_processes)  # checked before writing
        RunDir(out, is_main=_is_main()).prepare(cfg, fresh=not resume)  # members write their own config (with their seed)
        _state().wait_for_everyone()
    for i, member_out in enumerate(runs):
        if resume and _is_done(member_out, norm_source):
            continue
        mcfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=cfg.train.seed + i))
        records = train_records
        if cfg.ensemble.bootstrap:
            g = torch.Generator().manual_seed(mcfg.train.seed * 7919 + 17)
            records = [train_records[j] for j in torch.randint(len(train_records), (len(train_records),), generator=g).tolist()]
        if not (member_out / "final" / "run_complete.json").exists() or not resume:
            train_one(mcfg, member_out, records, held, tokenizer, max_length, resume, provenance)
        if norm_source != "none" and _is_main():
            normalize_folder(member_out / "final", normalization_samples(cfg, out, held_records, norm_prompts), cfg,
                             max_length, provenance.get("normalize/prompts_on", norm_source))

    final = out / "final"
    if n > 1 and _is_main():
        tmp = out / f".final-tmp-{os.getpid()}"
        info = {"seeds": [cfg.train.seed + i for i in range(n)], "bootstrap": cfg.ensemble.bootstrap,
                "aggregations": ["mean", "min", "uwo"]}
        write_ensemble(tmp, [r / "final" for r in runs], tokenizer, info)
        publish_folder(tmp, final)
        if held is not None:
            _evaluate_ensemble(final, held, held_records, out)
    _state().wait_for_everyone()
    return final


def _state():
    from rlhfkit.train.processes import processes

    return processes()  # told `cpu` when there is no CUDA: else torchrun's processes would each run alone


def _is_main() -> bool:
    return _state().is_main_process


def _evaluate_ensemble(final: Path, held: HeldOut, held_records: list[Comparison], out: Path) -> None:
    """Held-out metrics of every member and of each aggregation, in reward_eval.json + metrics.jsonl."""
    prompts = [r for r in held_records for _ in r.responses]
    responses = [x for r in held_records for x in r.responses]
    raw = load_reward_model(final, normalize=False).score(prompts, responses).members
    members = load_reward_model(final).score(prompts, responses).members  # normalised: comparable scales
    report = {f"member-{i}": held.metrics(raw[i]) for i in range(raw.shape[0])}
    for how in ("mean", "min", "uwo"):
        report[how] = held.metrics(aggregate_members(members, how, 1.0))
    (out / "reward_eval.json").write_text(json.dumps(report, indent=2))
    flat = {f"ensemble/{how}/{k.replace('/', '_')}": v for how in ("mean", "min", "uwo")
            for k, v in report[how].items() if k != "calibration"}
    flat["ensemble/std"] = members.std(0, correction=0).mean().item()
    MetricsLog(RunDir(out).metrics_path, "reward_ensemble").log(0, flat)
