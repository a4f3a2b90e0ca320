"""Online RL against a reward with a KL to the frozen SFT reference: PPO and the critic-free family.

One loop, several advantage estimators (`losses.advantages.ESTIMATORS`, chosen by `algo.estimator`):

    for step = 1..S:
        x  = global batch of prompts (deterministic in seed, step) -> this process's shard, each G times
        exp = make_experience(x)          y ~ pi, R = reward(x, y), old/ref log-probs (+ values),
                                          per-token KL, advantages A and returns (experience.py)
        for epoch in 1..E, minibatch b:   L = clipped surrogate(A)  [+ beta k3 KL  (GRPO family)]
                                              [+ vf_coef clipped value loss  (PPO)] [+ ptx NLL]
        beta <- adaptive controller(measured KL)  (when algo.kl_target is set)

    gae                    PPO (Ouyang et al. 2022): critic, KL per token in the reward, GAE, whitening
    grpo                   GRPO (Shao et al. 2024): (r - mean_group) / std_group, KL as a loss term
    dr_grpo                Dr. GRPO (Liu et al. 2025): no std division; loss / a constant
    rloo                   RLOO (Ahmadian et al. 2024): leave-one-out group baseline, KL in the reward
    reinforce_pp(_baseline) REINFORCE++ (Hu 2025): KL per token, returns to the end, global whitening

`rlhfkit ppo`, `grpo` and `rloo` are this loop with their own defaults (recipes/ppo.py, grpo.py,
rloo.py). A prompt's G samples stay in one process (a process takes whole prompts, each repeated G
times), so group statistics are local and N processes sample and update exactly as one does.
With LoRA the policy (and critic) train adapters and the reference is the policy with its adapters
off. Alarms (`monitor`) run after every logged step: warn, stop, or keep_best.

Why one file (~430 lines): the loop, the config sections that ppo.py, grpo.py and rloo.py give their
defaults to, and the policy update read together as the algorithm box above; sampling, scoring and
advantages are in `experience.py`, the maths in `losses/`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from rlhfkit.config import ConfigError, LogConfig, ModelConfig, TrainConfig, doc, replace, section
from rlhfkit.data import read_records
from rlhfkit.data.tokenize import collate_demonstrations, encode_prompt
from rlhfkit.evaluate import Judge, from_lab, held_out, perplexity, resolve_reward, text_features
from rlhfkit.experience import (
    Actors,
    Experience,
    ExperienceSpec,
    by_length,
    forward_window,
    make_experience,
    response_labels,
    response_logits,
)
from rlhfkit.losses.advantages import GROUPED, KL_IN_LOSS, NEEDS_CRITIC
from rlhfkit.losses.kl_control import KLController
from rlhfkit.losses.logprobs import token_logps
from rlhfkit.losses.ppo import kl_loss, policy_loss, value_loss
from rlhfkit.losses.sft import sft_loss
from rlhfkit.models.loading import (
    AdapterDisabled,
    disable_dropout,
    load_policy,
    load_reference,
    load_tokenizer,
)
from rlhfkit.models.value import load_value_model, token_values
from rlhfkit.monitor.alarms import MonitorConfig
from rlhfkit.rewards import build_reward
from rlhfkit.rollout import SamplingParams, make_backend
from rlhfkit.train.batches import BatchPlan
from rlhfkit.train.optim import build_optimizer, build_scheduler
from rlhfkit.train.seeds import derive_seed
from rlhfkit.train.session import TrainSession
from rlhfkit.train.step import train_step
from rlhfkit.train.watch import Watch

Estimator = Literal["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"]


# ----------------------------------------------------------------------------- config sections


@dataclass(frozen=True)
class RewardConfig:
    source: str | list[str] = doc("auto", "reward: an RM folder, an RM-ensemble folder, 'lab:gold' (auto = lab:gold for lab models or data), 'module:function' or 'path/to/file.py:function' (a function spec runs that Python code: name only code you trust; it also receives the prompt records' other fields it names, e.g. `answer`), or a list of these (a weighted sum)")
    weights: list[float] | None = doc(None, "weights of a list of reward sources (default: all 1); each source's mean is logged as reward/<name>/mean")
    aggregation: Literal["mean", "min", "uwo"] = doc("mean", "how an ensemble's members combine: mean, min (worst case), uwo (mean - lambda * var)")
    uwo_lambda: float = doc(1.0, "lambda, the weight of the members' variance for aggregation=uwo")
    missing_eos_penalty: float = doc(-1.0, "added to the score of a response that never emits EOS; 0 = off")
    clip: float = doc(0.0, "clip scores to [-clip, clip] before the KL penalty; 0 = off")
    batch_size: int = doc(64, "responses per reward-model forward")


@dataclass(frozen=True)
class RolloutConfig:
    max_new_tokens: int = doc(32, "response length limit in tokens")
    temperature: float = doc(1.0, "sampling temperature; log-probs are computed at the same temperature")
    stop: str | None = doc(None, "optional stop string: the response is cut just after it (counts as ended)")
    max_prompt_length: int = doc(64, "prompts longer than this keep their last tokens (after BOS)")
    group_size: int = doc(1, "G: responses sampled per prompt (GRPO / RLOO groups); train.batch_size counts responses")
    generate_batch_size: int = doc(64, "responses per generate call")
    backend: Literal["hf", "hf_generate", "vllm"] = doc("hf", "generation backend: hf (rlhfkit's sampling loop over the KV cache: the same token probabilities as transformers' generate, other samples for a seed; generate for models it does not cover), hf_generate (transformers' generate) or vllm (one CUDA GPU, one process; pip install rlhfkit[vllm])")
    vllm_gpu_memory_utilization: float = doc(0.3, "vllm: share of the GPU's memory the engine may take (training needs the rest)")
    is_cap: float = doc(0.0, "truncated importance sampling (Yao et al. 2025): weight each token's loss by min(pi_trainer / pi_sampler, is_cap) for a sampler (vllm) whose log-probs differ from the trainer's; 0 = off")


@dataclass(frozen=True)
class AlgoConfig:
    estimator: Estimator = doc("gae", "advantage estimator: gae (PPO, needs the critic), grpo, dr_grpo, rloo, reinforce_pp, reinforce_pp_baseline")
    ppo_epochs: int = doc(4, "policy-update passes over each rollout batch (1 with num_minibatches 1 = on-policy, ratio 1)")
    num_minibatches: int = doc(1, "optimizer steps per pass: the rollout batch is split into this many minibatches")
    clip_eps: float = doc(0.2, "policy ratio clip range epsilon (the lower one with clip_eps_high)")
    clip_eps_high: float | None = doc(None, "upper clip range (DAPO clip-higher, e.g. 0.28); null = clip_eps")
    value_clip_eps: float = doc(0.2, "value clip range around the rollout values (gae)")
    vf_coef: float = doc(0.1, "weight of the value loss (gae)")
    gamma: float = doc(1.0, "discount (gae)")
    lam: float = doc(0.95, "GAE lambda (gae)")
    kl_coef: float = doc(0.05, "beta: KL coefficient, in the reward (gae, rloo, reinforce_pp*) or the loss (grpo, dr_grpo)")
    kl_target: float | None = doc(None, "adaptive beta: target sequence KL in nats; null = fixed beta")
    kl_horizon: int = doc(10000, "adaptive beta horizon in episodes")
    kl_estimator: Literal["k1", "k2", "k3"] = doc("k1", "per-token KL estimator (k1 = log pi - log pi_ref; k3 is GRPO's loss term)")
    whiten_rewards: bool = doc(False, "gae: whiten per-token rewards over the global batch (mean kept) before GAE")
    whiten_advantages: bool = doc(True, "gae: whiten advantages over the global batch")
    loss_aggregation: Literal["auto", "token_mean", "seq_mean", "constant"] = doc("auto", "how per-token losses reduce: token_mean, seq_mean, or constant (sum / (responses x max_new_tokens), Dr. GRPO); auto = constant for dr_grpo, else token_mean")
    drop_uniform_groups: bool = doc(False, "leave groups whose rewards are all equal out of the loss (no signal; DAPO dynamic sampling); the share is logged")
    ptx_coef: float = doc(0.0, "PPO-ptx: weight gamma_ptx of the pretraining NLL term (needs data.ptx)")


@dataclass(frozen=True)
class CriticConfig:
    init: str = doc("policy", "'policy' (policy backbone, zero head), 'reward' (the RM in reward.source) or a folder")
    lr: float = doc(0.0, "critic learning rate; 0 = train.lr")


@dataclass(frozen=True)
class DataConfig:
    prompts: str = doc("lab:prompts_train", "prompt records: JSONL/JSON/Parquet, dataset folder or lab:NAME (other fields reach a function reward by name)")
    ptx: str | None = doc(None, "text records for PPO-ptx (e.g. lab:pretrain_eval); null = no ptx")
    ptx_batch_size: int = doc(8, "ptx examples per minibatch (per process)")
    ptx_max_length: int = doc(128, "max tokens per ptx example")


@dataclass(frozen=True)
class EvalConfig:
    text: str | None = doc("auto", "held-out text for eval/perplexity; auto = lab:pretrain_eval for lab models or prompts, else none; null = none")
    examples: int = doc(128, "held-out text examples per evaluation")
    gold: Judge = doc("auto", "score rollouts with the lab's gold judge (gold/mean): auto = for lab models or prompts; lab; none")


def train_section(**defaults):
    return section(TrainConfig, "optimisation", **defaults,
                   helps={"lr": "peak learning rate (AdamW) of the policy",
                          "warmup_ratio": "share of the total optimizer steps spent warming up linearly",
                          "batch_size": "rollout episodes (responses) per step, all processes together",
                          "micro_batch_size": "episodes per forward pass per process",
                          "max_steps": "steps (rollout batches); 0 = derive from epochs over the prompts"})


# ----------------------------------------------------------------------------- the loop


def run(cfg, out: str | Path, resume: bool = False, stage: str = "ppo") -> Path:
    """The online loop for any of the configs (PPOConfig, GRPOConfig, RLOOConfig)."""
    algo, critic_cfg = cfg.algo, getattr(cfg, "critic", None)
    _check(cfg, algo, critic_cfg)
    source = resolve_reward(cfg.reward.source, "reward.source", cfg.model.name_or_path, [cfg.data.prompts])
    s = TrainSession(cfg, out, stage=stage, resume=resume)
    if cfg.rollout.backend == "vllm" and s.world_size > 1:
        raise ConfigError("rollout.backend=vllm runs one in-process engine: use one process (or rollout.backend=hf)")
    cfg = replace(cfg, reward=replace(cfg.reward, source=source))  # config.yaml keeps the setting
    tokenizer = load_tokenizer(cfg.model)
    records = read_records(cfg.data.prompts, "prompt")
    prompt_ids = [encode_prompt(tokenizer, r, max_length=cfg.rollout.max_prompt_length) for r in records]
    heldout = held_out(stage, cfg.model.name_or_path, [cfg.data.prompts], judge=cfg.eval.gold, text=cfg.eval.text,
                       quiet=not s.is_main, keys={"judge": "eval.gold", "text": "eval.text"})
    eval_text = text_features(tokenizer, heldout.text.spec, limit=cfg.eval.examples) if heldout.text else []
    ptx = text_features(tokenizer, cfg.data.ptx, cfg.data.ptx_max_length) if cfg.data.ptx and algo.ptx_coef > 0 else []
    G = cfg.rollout.group_size
    plan = BatchPlan(len(records), cfg.train.batch_size // G, max(cfg.train.micro_batch_size // G, 1), s.world_size)
    total = plan.total_steps(cfg.train.epochs, cfg.train.max_steps)

    policy, ref, critic = load_models(cfg)
    reward = build_reward(cfg.reward.source, cfg.reward.aggregation, cfg.reward.uwo_lambda, cfg.reward.batch_size,
                          s.device, weights=cfg.reward.weights)
    for m in getattr(reward, "modules", list)():
        disable_dropout(m)
    models = {"policy": policy, **({"critic": critic} if critic is not None else {})}
    optimizer = _optimizer(cfg, policy, critic, critic_cfg, fused=not s.sharded)
    updates = algo.ppo_epochs * algo.num_minibatches
    scheduler = build_scheduler(optimizer, cfg.train, total * updates)
    kl_ctl = KLController(algo.kl_coef, algo.kl_target, algo.kl_horizon)
    start, extra = s.resume(models, optimizer, scheduler)
    kl_ctl.load_state_dict(extra.get("kl_controller", kl_ctl.state_dict()))
    watch = Watch(s, cfg.monitor, policy, tokenizer, start)
    acc = s.accelerator
    trained = acc.prepare(*models.values(), optimizer)
    models, optimizer = dict(zip(models, trained[:-1], strict=True)), trained[-1]
    if not isinstance(ref, AdapterDisabled):  # that one calls the unwrapped peft model: no grad, no DDP hooks
        ref = acc.prepare_model(ref, evaluation_mode=True)  # placed, not wrapped for training
    for m in getattr(reward, "modules", list)():
        s.shard_frozen(m)  # train.sharding=fsdp: reward models sharded too
    for m in models.values():
        m.train()
    # Built after resume, so a vLLM engine starts from the resumed weights; hf samples the live policy.
    opts = {"gpu_memory_utilization": cfg.rollout.vllm_gpu_memory_utilization} if cfg.rollout.backend == "vllm" else {}
    actors = Actors(models["policy"], ref, models.get("critic"), reward, acc, tokenizer,
                    make_backend(cfg.rollout.backend, acc.unwrap_model(models["policy"]), tokenizer, **opts),
                    judge=build_reward(heldout.judge) if heldout.judge else None)
    spec = _spec(cfg, algo)

    bar = s.progress(total, start)
    loop_start = time.time()
    for step in range(start, total):
        t0 = time.time()
        ids = plan.shard(plan.global_batch(step, cfg.train.seed), s.rank)
        exp = make_experience(actors, [records[i] for i in ids], [prompt_ids[i] for i in ids],
                              s.rank * plan.per_process * G, step, kl_ctl.beta, spec)
        t_rollout = time.time() - t0
        stats = _update(cfg, algo, s, models, optimizer, scheduler, exp, kl_ctl.beta, ptx, step)
        t_update = time.time() - t0 - t_rollout
        actors.backend.sync_weights(acc.unwrap_model(models["policy"]))  # hf: no-op
        metrics = {**exp.metrics(acc), **stats, "kl/beta": kl_ctl.beta}
        kl_ctl.update(metrics["kl/mean"], cfg.train.batch_size)
        metrics.update({"train/lr": scheduler.get_last_lr()[0], "time/rollout_s": t_rollout, "time/update_s": t_update,
                        "time/step_s": time.time() - t0, "time/elapsed_s": time.time() - loop_start,
                        "perf/episodes_per_s": cfg.train.batch_size / (time.time() - t0)})
        if eval_text and cfg.log.eval_every and ((step + 1) % cfg.log.eval_every == 0 or step + 1 == total):
            metrics["eval/perplexity"] = perplexity(models["policy"], eval_text, tokenizer.pad_token_id,
                                                    cfg.train.micro_batch_size, acc)["perplexity"]
        s.log(step + 1, metrics)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", kl=f"{metrics['kl/mean']:.2f}")
        if watch.after_log(step + 1, metrics, models["policy"]):
            break
        s.maybe_save(step + 1, total, models, optimizer, scheduler, extra={"kl_controller": kl_ctl.state_dict()},
                     tokenizer=tokenizer)
    bar.close()
    summary = watch.finish(models["policy"])  # keep_best: final/ = the best step's policy (a critic stays the last step's)
    summary = {"steps": summary.get("stopped_at", total), "kl_beta": kl_ctl.beta, "estimator": algo.estimator, **summary,
               "lab": from_lab(cfg.model.name_or_path), "reward/source": cfg.reward.source, **heldout.provenance()}
    if eval_text:
        summary["eval_perplexity"] = perplexity(models["policy"], eval_text, tokenizer.pad_token_id,
                                                cfg.train.micro_batch_size, acc)["perplexity"]
    return s.finish(models, tokenizer, primary="policy", summary=summary)


# ----------------------------------------------------------------------------- the policy update


@dataclass
class UpdateStats:
    """Means over the step's optimizer updates (losses: global; shares: over this step's tokens)."""

    policy_loss: float = 0.0
    value_loss: float = 0.0
    kl_loss: float = 0.0
    ptx_loss: float = 0.0
    clipfrac: float = 0.0
    approx_kl: float = 0.0
    value_clipfrac: float = 0.0
    grad_norm_policy: float = 0.0
    grad_norm_critic: float = 0.0

    def as_metrics(self, critic: bool, kl_in_loss: bool, ptx: bool) -> dict[str, float]:
        out = {"loss/policy": self.policy_loss, "policy/clipfrac": self.clipfrac, "policy/approx_kl": self.approx_kl,
               "train/grad_norm_policy": self.grad_norm_policy}
        if critic:
            out.update({"loss/value": self.value_loss, "value/clipfrac": self.value_clipfrac,
                        "train/grad_norm_critic": self.grad_norm_critic})
        if kl_in_loss:
            out["loss/kl"] = self.kl_loss
        if ptx:
            out["loss/ptx"] = self.ptx_loss
        return out


def _update(cfg, algo, s: TrainSession, models: dict, optimizer, scheduler, exp: Experience, beta: float,
            ptx: list[dict], step: int) -> dict[str, float]:
    """algo.ppo_epochs passes x algo.num_minibatches optimizer steps over the experience; every loss
    is divided by its minibatch's global normaliser (tokens, responses, or responses x max_new_tokens)."""
    acc, policy, critic = s.accelerator, models["policy"], models.get("critic")
    mode = _aggregation(algo)
    kl_in_loss, T = algo.estimator in KL_IN_LOSS, cfg.rollout.temperature
    roll, mask, pad = exp.roll, exp.loss_mask, exp.pad_token_id
    stats, n = UpdateStats(), roll.size
    updates = algo.ppo_epochs * algo.num_minibatches
    g = torch.Generator().manual_seed(derive_seed(cfg.train.seed, "minibatches", step, s.rank))

    def loss_fn(rows):
        if isinstance(rows, dict):  # PPO-ptx (InstructGPT eq. 2): gamma_ptx * NLL of a pretraining batch
            nll, _ = sft_loss(policy(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"]).logits,
                              rows["labels"])
            # per-process mean; DDP averages processes; train_step multiplies by world size
            return algo.ptx_coef * nll / s.world_size, {"ptx": nll.detach()}
        inputs, r = forward_window(roll, rows)
        m = mask[rows, :r]
        logits = response_logits(policy, inputs, r, T)
        logps = token_logps(logits, response_labels(roll, rows, r))
        if exp.old_from_update:  # on-policy: pi_old is this very forward (ratio 1)
            exp.record_old(rows, logps, logits)
        weights = exp.is_weights[rows, :r] if exp.is_weights is not None else None
        loss, pm = policy_loss(logps, exp.old_logps[rows, :r], exp.advantages[rows, :r], m, algo.clip_eps, normalizer,
                               mode, algo.clip_eps_high, weights=weights)
        share = len(rows) / n / algo.ppo_epochs  # metric shares: means over the step's tokens
        out = {"policy": loss.detach(), "clipfrac": pm["clipfrac"] * share, "approx_kl": pm["approx_kl"] * share}
        if kl_in_loss:
            kl, _ = kl_loss(logps, exp.ref_logps[rows, :r], m, beta, algo.kl_estimator, normalizer, mode)
            loss, out["kl"] = loss + kl, kl.detach()
        if critic is not None:
            v = token_values(critic, **inputs)[:, -r:]
            vf, vm = value_loss(v, exp.values[rows, :r], exp.returns[rows, :r], m, algo.value_clip_eps, normalizer, mode)
            loss, out["value"], out["value_clipfrac"] = loss + algo.vf_coef * vf, vf.detach(), vm["clipfrac"] * share
        return loss, out

    for epoch in range(algo.ppo_epochs):
        for k, mb in enumerate(torch.randperm(n, generator=g).to(s.device).chunk(algo.num_minibatches)):
            normalizer = _normalizer(acc, mode, mask[mb], cfg.rollout.max_new_tokens)
            micro = list(by_length(roll, mb).split(cfg.train.micro_batch_size))
            if ptx:
                micro = [_ptx_batch(cfg, s, ptx, step, epoch * algo.num_minibatches + k, pad)] + micro
            res = train_step(s, list(models.values()), optimizer, scheduler, micro, loss_fn, cfg.train.max_grad_norm)
            w = s.world_size / updates  # this process's share of the global loss, x world, mean over processes
            stats.policy_loss += res.sums["policy"].item() * w
            stats.clipfrac += res.sums["clipfrac"].item()
            stats.approx_kl += res.sums["approx_kl"].item()
            stats.kl_loss += res.sums["kl"].item() * w if kl_in_loss else 0.0
            stats.ptx_loss += res.sums["ptx"].item() / updates if ptx else 0.0
            if critic is not None:
                stats.value_loss += res.sums["value"].item() * w
                stats.value_clipfrac += res.sums["value_clipfrac"].item()
            if res.grad_norms:
                stats.grad_norm_policy += res.grad_norms[0] / updates
                stats.grad_norm_critic += res.grad_norms[-1] / updates if critic is not None else 0.0
    if exp.old_from_update:
        exp.finish_old(algo.kl_estimator)
    return _mean_over_processes(acc, stats.as_metrics(critic is not None, kl_in_loss, bool(ptx)))


def _ptx_batch(cfg, s: TrainSession, feats: list[dict], step: int, update: int, pad: int) -> dict:
    """PPO-ptx: one pretraining batch per minibatch, drawn within this process."""
    g = torch.Generator().manual_seed(derive_seed(cfg.train.seed, "ptx", step, s.rank, update))
    pick = torch.randint(len(feats), (cfg.data.ptx_batch_size,), generator=g).tolist()
    return {k: v.to(s.device) for k, v in collate_demonstrations([feats[i] for i in pick], pad).items()}


# ----------------------------------------------------------------------------- helpers


def load_models(cfg):
    """(policy, ref, critic or None), dropout off. With LoRA and no `ref_model`, ref = the policy with
    its adapters disabled (the same parameters, frozen base); otherwise a separate frozen model. The
    critic only for estimators that need one (PPO's gae)."""
    policy = load_policy(cfg.model)
    disable_dropout(policy)
    ref = load_reference(cfg.model, policy, cfg.ref_model)
    critic = None
    if cfg.algo.estimator in NEEDS_CRITIC:
        init = cfg.critic.init
        critic = load_value_model(cfg.reward.source if init == "reward" else init, cfg.model)  # dropout off
    return policy, ref, critic


def _check(cfg, algo: AlgoConfig, critic_cfg) -> None:
    if cfg.rollout.temperature <= 0:
        raise ConfigError("rollout.temperature must be > 0: the update needs the sampling distribution's log-probs")
    key = "ppo" if hasattr(cfg, "ppo") else "algo"  # PPO names its algorithm section `ppo:`
    if algo.ptx_coef > 0 and not cfg.data.ptx:
        raise ConfigError(f"{key}.ptx_coef > 0 needs data.ptx (text records for the pretraining term)")
    if algo.estimator in NEEDS_CRITIC and critic_cfg is None:
        raise ConfigError(f"estimator '{algo.estimator}' needs a critic: use `rlhfkit ppo`")
    G = cfg.rollout.group_size
    if algo.estimator in GROUPED and G < 2:
        raise ConfigError(f"estimator '{algo.estimator}' compares responses to one prompt: set rollout.group_size >= 2")
    if G < 1 or cfg.train.batch_size % G:
        raise ConfigError(f"train.batch_size ({cfg.train.batch_size}) must be a multiple of rollout.group_size ({G})")
    if algo.drop_uniform_groups and G < 2:
        raise ConfigError(f"{key}.drop_uniform_groups needs groups: set rollout.group_size >= 2")


def _aggregation(algo: AlgoConfig) -> str:
    if algo.loss_aggregation != "auto":
        return algo.loss_aggregation
    return "constant" if algo.estimator == "dr_grpo" else "token_mean"


def _normalizer(acc, mode: str, mask: torch.Tensor, max_new_tokens: int) -> float:
    """The minibatch's global count: tokens (token_mean), responses (seq_mean), or responses x
    max_new_tokens (constant), summed over processes."""
    local = {"token_mean": mask.sum(), "seq_mean": (mask.sum(1) > 0).sum().to(mask.dtype),
             "constant": (mask.sum(1) > 0).sum().to(mask.dtype) * max_new_tokens}[mode]
    return max(acc.reduce(local.detach().clone(), "sum").item(), 1.0)


def _spec(cfg, algo: AlgoConfig) -> ExperienceSpec:
    r = cfg.rollout
    return ExperienceSpec(
        params=SamplingParams(max_new_tokens=r.max_new_tokens, temperature=r.temperature, stop=r.stop),
        group_size=r.group_size, generate_batch_size=r.generate_batch_size, seed=cfg.train.seed,
        micro_batch_size=cfg.train.micro_batch_size, missing_eos_penalty=cfg.reward.missing_eos_penalty,
        reward_clip=cfg.reward.clip, estimator=algo.estimator, kl_estimator=algo.kl_estimator, gamma=algo.gamma,
        lam=algo.lam, whiten_rewards=algo.whiten_rewards, whiten_advantages=algo.whiten_advantages,
        drop_uniform_groups=algo.drop_uniform_groups, is_cap=r.is_cap,
        old_logps_from_update=(algo.ppo_epochs == 1 and algo.num_minibatches == 1 and algo.estimator in KL_IN_LOSS
                               and r.is_cap <= 0))


def _optimizer(cfg, policy, critic, critic_cfg, fused: bool = True):
    """One AdamW over the policy's parameter groups and (PPO) the critic's at its own lr, so one
    optimizer/scheduler checkpoint covers both; gradients are clipped per model.

    `fused`: torch's fused AdamW kernel (one op per step instead of a dozen per tensor: 3 vs 9 ms a
    step for a 1M-parameter model on one CPU core; the HF Trainer's default, so TRL's) where torch
    has it for every parameter (CPU or CUDA floating point; not for FSDP's sharded parameters)."""
    groups = build_optimizer(policy, cfg.train).param_groups
    if critic is not None:
        groups += [dict(g, lr=critic_cfg.lr or cfg.train.lr) for g in build_optimizer(critic, cfg.train).param_groups]
    fused = fused and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in groups for p in g["params"])
    groups = [dict(g, fused=fused or None) for g in groups]  # each group carries its own flag (build_optimizer's: None)
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=tuple(cfg.train.adam_betas), eps=cfg.train.adam_eps,
                             fused=fused or None)


def _mean_over_processes(acc, local: dict[str, float]) -> dict[str, float]:
    if acc.num_processes == 1:
        return dict(local)
    keys = sorted(local)
    vec = acc.reduce(torch.tensor([local[k] for k in keys], device=acc.device, dtype=torch.float64), "mean")
    return dict(zip(keys, vec.tolist(), strict=True))


__all__ = ["AlgoConfig", "CriticConfig", "DataConfig", "EvalConfig", "LogConfig", "ModelConfig", "MonitorConfig",
           "RewardConfig", "RolloutConfig", "run", "train_section"]
