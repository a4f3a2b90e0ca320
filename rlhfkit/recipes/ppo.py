"""PPO against a reward with a KL penalty to the frozen SFT reference: maximise E[R(x, y)] - beta KL(pi || pi_ref).

InstructGPT (Ouyang et al. 2022) / Ziegler et al. 2019 (lm-human-preferences), one step:

    x     = global batch of prompts (deterministic in seed, step) -> this process's shard
    y     ~ pi(. | x) at temperature T, cut at the first EOS            (rollout.generate)
    R     = reward(x, y) + missing_eos_penalty * [y never ended]        (rewards.build_reward)
    old_logps, ref_logps, values = pi, pi_ref, critic on y (no grad, same temperature T)
    r_t   = -beta * kl_t (+ R at the last token);  A, returns = GAE(r, values; gamma, lam)
    ppo_epochs x num_minibatches:  L = clipped surrogate + vf_coef * clipped value loss (+ ptx NLL)
    beta  <- adaptive controller(measured KL)                          (losses.kl_control)

With `model.lora.enabled`, policy and critic train LoRA adapters (the critic's `score` head in
full) and the reference is the policy with its adapters disabled: no second copy of the weights.
After every logged step `monitor` checks the reward-hacking alarms (alarms.jsonl) and applies its
action: warn, stop (final/ = that step, run_complete.json says why), or keep_best (final/ = the
policy of the best step by `monitor.best_metric`, snapshotted in best/; final/critic/ = the last).

Processes: each samples its contiguous shard of the global batch, one generate call per slice
[k G, (k+1) G) of global batch positions (G = rollout.generate_batch_size) cut at the shard's ends,
seeded by (seed, step, the slice's first global position). When G divides batch_size / processes,
N processes therefore sample exactly the responses one process samples; whitening uses the whole
global batch. PPO minibatches and ptx batches are drawn within each process's shard.

Policy and critic share one AdamW (two sets of parameter groups, the critic's at `critic.lr`),
so one optimizer/scheduler checkpoint covers both; gradients are clipped per model. Every loss
is normalised by the global token count of its minibatch (all processes), so micro-batching and
process count do not change it. Dropout is off in the policy, reference, critic and RM.
"""

from __future__ import annotations

import inspect
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from rlhfkit.config import ConfigError, LogConfig, ModelConfig, TrainConfig, doc, replace, section
from rlhfkit.data import encode_prompt, pad_batch, read_records
from rlhfkit.evaluate import Judge, from_lab, held_out, perplexity, resolve_reward, text_features
from rlhfkit.losses.kl_control import KLController
from rlhfkit.losses.logprobs import entropy_from_logits, token_logps
from rlhfkit.losses.ppo import (
    explained_variance,
    gae,
    kl_per_token,
    policy_loss,
    token_rewards,
    value_loss,
    whiten,
)
from rlhfkit.losses.reduce import masked_mean
from rlhfkit.losses.sft import sft_loss
from rlhfkit.models.loading import (
    AdapterDisabled,
    disable_dropout,
    is_peft,
    load_policy,
    load_reference,
    load_tokenizer,
)
from rlhfkit.models.value import load_value_model, token_values
from rlhfkit.monitor.alarms import MonitorConfig
from rlhfkit.rewards import build_reward
from rlhfkit.rollout import GenerationBackend, SamplingParams, make_backend
from rlhfkit.train.batches import BatchPlan
from rlhfkit.train.optim import build_optimizer, build_scheduler
from rlhfkit.train.session import TrainSession
from rlhfkit.train.watch import Watch


@dataclass(frozen=True)
class PPORewardConfig:
    source: str = doc("auto", "reward: an RM folder, an RM-ensemble folder, 'lab:gold' (PPO-GT; auto = lab:gold for lab models or data), 'module:function' or 'path/to/file.py:function' (a function spec runs that Python code: name only code you trust)")
    aggregation: Literal["mean", "min", "uwo"] = doc("mean", "how an ensemble's members combine: mean, min (worst case), uwo (mean - lambda * var)")
    uwo_lambda: float = doc(1.0, "lambda, the weight of the members' variance for aggregation=uwo")
    missing_eos_penalty: float = doc(-1.0, "added to the score of a response that never emits EOS; 0 = off")
    clip: float = doc(0.0, "clip scores to [-clip, clip] before the KL penalty; 0 = off")
    batch_size: int = doc(64, "responses per reward-model forward")


@dataclass(frozen=True)
class PPORolloutConfig:
    max_new_tokens: int = doc(32, "response length limit in tokens")
    temperature: float = doc(1.0, "sampling temperature; log-probs are computed at the same temperature")
    stop: str | None = doc(None, "optional stop string: the response is cut just after it (counts as ended)")
    max_prompt_length: int = doc(64, "prompts longer than this keep their last tokens (after BOS)")
    generate_batch_size: int = doc(64, "prompts per generate call")
    backend: Literal["hf", "vllm"] = doc("hf", "generation backend: hf (transformers generate) or vllm (one CUDA GPU, one process; pip install rlhfkit[vllm])")
    vllm_gpu_memory_utilization: float = doc(0.3, "vllm: share of the GPU's memory the engine may take (training needs the rest)")


@dataclass(frozen=True)
class PPOAlgoConfig:
    ppo_epochs: int = doc(4, "passes over each rollout batch")
    num_minibatches: int = doc(1, "optimizer steps per pass: the rollout batch is split into this many minibatches")
    clip_eps: float = doc(0.2, "policy ratio clip range epsilon")
    value_clip_eps: float = doc(0.2, "value clip range around the rollout values")
    vf_coef: float = doc(0.1, "weight of the value loss")
    gamma: float = doc(1.0, "discount")
    lam: float = doc(0.95, "GAE lambda")
    kl_coef: float = doc(0.05, "beta: KL penalty coefficient (initial value when adaptive)")
    kl_target: float | None = doc(None, "adaptive beta: target sequence KL in nats; null = fixed beta")
    kl_horizon: int = doc(10000, "adaptive beta horizon in episodes")
    kl_estimator: Literal["k1", "k2", "k3"] = doc("k1", "per-token KL estimator in the penalty (k1 = log pi - log pi_ref)")
    whiten_rewards: bool = doc(False, "whiten per-token rewards over the batch (mean kept) before GAE")
    whiten_advantages: bool = doc(True, "whiten advantages over the batch")
    loss_aggregation: Literal["token_mean", "seq_mean"] = doc("token_mean", "how per-token losses reduce")
    ptx_coef: float = doc(0.0, "PPO-ptx: weight gamma_ptx of the pretraining NLL term (needs data.ptx)")


@dataclass(frozen=True)
class PPOCriticConfig:
    init: str = doc("policy", "'policy' (policy backbone, zero head), 'reward' (the RM in reward.source) or a folder")
    lr: float = doc(0.0, "critic learning rate; 0 = train.lr")


@dataclass(frozen=True)
class PPODataConfig:
    prompts: str = doc("lab:prompts_train", "prompt records: JSONL/JSON/Parquet, dataset folder or lab:NAME")
    ptx: str | None = doc(None, "text records for PPO-ptx (e.g. lab:pretrain_eval); null = no ptx")
    ptx_batch_size: int = doc(8, "ptx examples per minibatch (per process)")
    ptx_max_length: int = doc(128, "max tokens per ptx example")


@dataclass(frozen=True)
class PPOEvalConfig:
    text: str | None = doc("auto", "held-out text for eval/perplexity; auto = lab:pretrain_eval for lab models or prompts, else none; null = none")
    examples: int = doc(128, "held-out text examples per evaluation")
    gold: Judge = doc("auto", "score rollouts with the lab's gold judge (gold/mean): auto = for lab models or prompts; lab; none")


@dataclass(frozen=True)
class PPOConfig:
    model: ModelConfig = section(ModelConfig, "policy to optimise (usually the SFT model)")
    ref_model: str | None = doc(None, "frozen reference for the KL penalty; null = the initial policy")
    reward: PPORewardConfig = section(PPORewardConfig, "reward source")
    critic: PPOCriticConfig = section(PPOCriticConfig, "value model")
    rollout: PPORolloutConfig = section(PPORolloutConfig, "sampling")
    ppo: PPOAlgoConfig = section(PPOAlgoConfig, "PPO")
    data: PPODataConfig = section(PPODataConfig, "prompts and ptx text")
    eval: PPOEvalConfig = section(PPOEvalConfig, "evaluation")
    train: TrainConfig = section(
        TrainConfig, "optimisation", lr=1e-5, schedule="constant", warmup_ratio=0.0, batch_size=64,
        micro_batch_size=16, max_steps=100,
        helps={"lr": "peak learning rate (AdamW) of the policy",
               "warmup_ratio": "share of the total optimizer steps spent warming up linearly",
               "batch_size": "rollout episodes per PPO step (all processes together)",
               "micro_batch_size": "episodes per forward pass per process",
               "max_steps": "PPO steps (rollout batches); 0 = derive from epochs over the prompts"})
    log: LogConfig = section(LogConfig, "logging, evaluation and checkpoints")
    monitor: MonitorConfig = section(MonitorConfig, "reward-hacking alarms during training and what they do")


# ----------------------------------------------------------------------------- rollout batch


@dataclass
class Rollout:
    """One process's rollout batch. Rows are [prompt left-padded to P | response right-padded to R]."""

    input_ids: torch.Tensor  # (N, P + R)
    attention_mask: torch.Tensor  # (N, P + R)
    response_mask: torch.Tensor  # (N, R) 1 on response tokens up to and including the first EOS
    prompt_len: int  # P


def build_rollout(prompt_ids: list[list[int]], response_ids: list[list[int]], pad: int, device) -> Rollout:
    resp = [r if r else [pad] for r in response_ids]  # an empty response still has a slot (masked out)
    prompts = pad_batch(prompt_ids, pad, "left")
    responses = pad_batch(resp, pad, "right")
    p_mask = (torch.arange(prompts.shape[1])[None] >= prompts.shape[1] - torch.tensor([len(p) for p in prompt_ids])[:, None]).long()
    r_mask = (torch.arange(responses.shape[1])[None] < torch.tensor([len(r) for r in response_ids])[:, None]).long()
    return Rollout(torch.cat([prompts, responses], 1).to(device), torch.cat([p_mask, r_mask], 1).to(device),
                   r_mask.float().to(device), prompts.shape[1])


def forward_window(roll: Rollout, rows: torch.Tensor) -> tuple[dict, int]:
    """Model inputs for `rows`, trimmed to the columns they need: from the first real prompt token
    to the second-to-last response token (the last one is predicted, never an input).
    Returns (inputs, r) where the last r positions' outputs belong to response tokens 0..r-1."""
    att = roll.attention_mask[rows]
    P = roll.prompt_len
    p0 = int((att[:, :P].sum(0) > 0).nonzero()[0]) if att[:, :P].any() else P - 1
    r = max(int(roll.response_mask[rows].sum(1).max()), 1)
    ids, att = roll.input_ids[rows, p0 : P + r - 1], att[:, p0 : P + r - 1]
    pos = (att.cumsum(-1) - 1).clamp(min=0)  # = generate's position ids under left padding
    return {"input_ids": ids, "attention_mask": att, "position_ids": pos}, r


def response_logits(model, inputs: dict, r: int, temperature: float) -> torch.Tensor:
    """(n, r, V) logits predicting the response tokens, divided by the sampling temperature.
    `logits_to_keep` skips the LM head on prompt positions where the model supports it."""
    keep = {"logits_to_keep": r} if _keeps_logits(model) else {}
    logits = model(**inputs, **keep).logits[:, -r:]
    return logits.float() / temperature


def _keeps_logits(model) -> bool:
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_policy", inner)  # AdapterDisabled
    inner = inner.get_base_model() if is_peft(inner) else inner
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def response_labels(roll: Rollout, rows: torch.Tensor, r: int) -> torch.Tensor:
    labels = roll.input_ids[rows, roll.prompt_len : roll.prompt_len + r]
    return torch.where(roll.response_mask[rows, :r] > 0, labels, torch.full_like(labels, -100))


def by_length(roll: Rollout, rows: torch.Tensor) -> torch.Tensor:
    """`rows` sorted by (response length, prompt length), so consecutive micro-batches hold
    similar lengths and `forward_window` trims most padding. A minibatch's gradient is a sum
    over its micro-batches, so the order does not change it."""
    att = roll.attention_mask[rows]
    key = att[:, roll.prompt_len :].sum(1) * (roll.prompt_len + 1) + att[:, : roll.prompt_len].sum(1)
    return rows[torch.argsort(key, stable=True)]


def fill(full: torch.Tensor, rows: torch.Tensor, part: torch.Tensor) -> None:
    full[rows, : part.shape[1]] = part.to(full.dtype)


def load_models(cfg: PPOConfig):
    """(policy, ref, critic), dropout off. With LoRA and no `ref_model`, ref = the policy with its
    adapters disabled (the same parameters, frozen base); otherwise a separate frozen model."""
    policy = load_policy(cfg.model)
    disable_dropout(policy)
    ref = load_reference(cfg.model, policy, cfg.ref_model)
    critic_init = cfg.reward.source if cfg.critic.init == "reward" else cfg.critic.init
    critic = load_value_model(critic_init, cfg.model)  # dropout off
    return policy, ref, critic


def sample_shard(backend: GenerationBackend, prompts: list[list[int]], params: SamplingParams, offset: int, group: int,
                 seed: int, step: int) -> list:
    """Samples for this process's prompts, which sit at global batch positions offset, offset+1, ...
    One generate call per slice of `group` global positions (cut at the shard's ends), seeded by
    the slice's first global position, so the samples do not depend on the number of processes
    when `group` divides the shard size."""
    out, i = [], 0
    while i < len(prompts):
        pos = offset + i
        j = min(len(prompts), i + group - pos % group)  # up to the next multiple of `group`
        out += backend.generate(prompts[i:j], params, group, seed=_seed(seed, step, pos))
        i = j
    return out


def whiten_global(acc, values: torch.Tensor, mask: torch.Tensor, **kw) -> torch.Tensor:
    """`whiten` over the global batch (every process's rows, gathered), returning this process's
    rows: the statistics must not depend on how the batch is sharded. values, mask: (N, R)."""
    if acc.num_processes == 1:
        return whiten(values, mask, **kw)
    n, r = values.shape
    full = whiten(acc.gather(acc.pad_across_processes(values, dim=1)),
                  acc.gather(acc.pad_across_processes(mask, dim=1)), **kw)  # (world * N, R_max)
    return full[acc.process_index * n : (acc.process_index + 1) * n, :r]


# ----------------------------------------------------------------------------- the recipe


def run(cfg: PPOConfig, out: str | Path, resume: bool = False) -> Path:
    if cfg.rollout.temperature <= 0:
        raise ConfigError("rollout.temperature must be > 0: PPO needs the sampling distribution's log-probs")
    if cfg.ppo.ptx_coef > 0 and not cfg.data.ptx:
        raise ConfigError("ppo.ptx_coef > 0 needs data.ptx (text records for the pretraining term)")
    source = resolve_reward(cfg.reward.source, "reward.source", cfg.model.name_or_path, [cfg.data.prompts])
    s = TrainSession(cfg, out, stage="ppo", resume=resume)
    cfg = replace(cfg, reward=replace(cfg.reward, source=source))  # the source used; config.yaml keeps the setting
    if cfg.rollout.backend == "vllm" and s.world_size > 1:
        raise ConfigError("rollout.backend=vllm runs one in-process engine: use one process (or rollout.backend=hf)")
    tokenizer = load_tokenizer(cfg.model)
    pad = tokenizer.pad_token_id
    records = read_records(cfg.data.prompts, "prompt")
    prompt_texts = [r.prompt for r in records]
    prompt_ids = [encode_prompt(tokenizer, r, max_length=cfg.rollout.max_prompt_length) for r in records]
    heldout = held_out("ppo", cfg.model.name_or_path, [cfg.data.prompts], judge=cfg.eval.gold, text=cfg.eval.text,
                       quiet=not s.is_main, keys={"judge": "eval.gold", "text": "eval.text"})
    eval_text = text_features(tokenizer, heldout.text.spec, limit=cfg.eval.examples) if heldout.text else []
    ptx_feats = text_features(tokenizer, cfg.data.ptx, cfg.data.ptx_max_length) if cfg.data.ptx and cfg.ppo.ptx_coef > 0 else []
    use_gold = heldout.judge is not None  # gold/mean of the training rollouts
    params = SamplingParams(max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature, stop=cfg.rollout.stop)

    plan = BatchPlan(len(records), cfg.train.batch_size, cfg.train.micro_batch_size, s.world_size)
    total = plan.total_steps(cfg.train.epochs, cfg.train.max_steps)
    policy, ref, critic = load_models(cfg)
    reward = build_reward(cfg.reward.source, cfg.reward.aggregation, cfg.reward.uwo_lambda, cfg.reward.batch_size, s.device)
    for m in getattr(reward, "modules", list)():
        disable_dropout(m)

    # One AdamW over both models: the policy's parameter groups, then the critic's at its own lr.
    groups = build_optimizer(policy, cfg.train).param_groups + [
        dict(g, lr=cfg.critic.lr or cfg.train.lr) for g in build_optimizer(critic, cfg.train).param_groups]
    optimizer = torch.optim.AdamW(groups, lr=cfg.train.lr, betas=tuple(cfg.train.adam_betas), eps=cfg.train.adam_eps)
    opt_steps = cfg.ppo.ppo_epochs * cfg.ppo.num_minibatches
    scheduler = build_scheduler(optimizer, cfg.train, total * opt_steps)
    kl_ctl = KLController(cfg.ppo.kl_coef, cfg.ppo.kl_target, cfg.ppo.kl_horizon)
    start, extra = s.resume({"policy": policy, "critic": critic}, optimizer, scheduler)
    if "kl_controller" in extra:
        kl_ctl.load_state_dict(extra["kl_controller"])
    watch = Watch(s, cfg.monitor, policy, tokenizer, start)
    policy, critic, optimizer = s.accelerator.prepare(policy, critic, optimizer)
    if not isinstance(ref, AdapterDisabled):  # that one calls the unwrapped peft model: no grad, no DDP hooks
        ref = s.accelerator.prepare_model(ref, evaluation_mode=True)  # placed, not wrapped for training
    policy.train()
    critic.train()
    acc, T = s.accelerator, cfg.rollout.temperature
    # Built after resume, so a vLLM engine starts from the resumed weights; hf samples the live policy.
    opts = {"gpu_memory_utilization": cfg.rollout.vllm_gpu_memory_utilization} if cfg.rollout.backend == "vllm" else {}
    backend = make_backend(cfg.rollout.backend, acc.unwrap_model(policy), tokenizer, **opts)

    bar = s.progress(total, start)
    loop_start = time.time()
    for step in range(start, total):
        t0 = time.time()
        # ---- rollout: sample, score, and the no-grad forward passes -------------------------
        ids = plan.shard(plan.global_batch(step, cfg.train.seed), s.rank)
        samples = sample_shard(backend, [prompt_ids[i] for i in ids], params,
                               s.rank * plan.per_process, cfg.rollout.generate_batch_size, cfg.train.seed, step)
        texts = [prompt_texts[i] for i in ids]
        responses = [smp.text for smp in samples]
        scored = reward(texts, responses, [prompt_ids[i] for i in ids], [smp.response_ids for smp in samples])
        finished = torch.tensor([smp.finished for smp in samples], dtype=torch.float32)
        scores = scored.rewards + cfg.reward.missing_eos_penalty * (1.0 - finished)
        if cfg.reward.clip > 0:
            scores = scores.clamp(-cfg.reward.clip, cfg.reward.clip)
        roll = build_rollout([prompt_ids[i] for i in ids], [smp.response_ids for smp in samples], pad, s.device)
        mask = roll.response_mask  # (N, R)
        N = mask.shape[0]
        old_logps, ref_logps, values, entropy = (torch.zeros_like(mask) for _ in range(4))
        with torch.no_grad(), acc.autocast():
            for rows in by_length(roll, torch.arange(N, device=s.device)).split(cfg.train.micro_batch_size):
                inputs, r = forward_window(roll, rows)
                labels = response_labels(roll, rows, r)
                logits = response_logits(policy, inputs, r, T)
                fill(old_logps, rows, token_logps(logits, labels))
                fill(entropy, rows, entropy_from_logits(logits))  # of the sampling policy, per token
                fill(ref_logps, rows, token_logps(response_logits(ref, inputs, r, T), labels))
                fill(values, rows, token_values(critic, **inputs)[:, -r:])
        values = values * mask
        kl = kl_per_token(old_logps, ref_logps, mask, cfg.ppo.kl_estimator)  # (N, R)
        rewards = token_rewards(scores.to(s.device), kl, mask, kl_ctl.beta)
        total_reward = rewards.sum(1).mean().item()
        if cfg.ppo.whiten_rewards:
            rewards = whiten_global(acc, rewards, mask, shift_mean=False)
        advantages, returns = gae(rewards, values, mask, cfg.ppo.gamma, cfg.ppo.lam)
        if cfg.ppo.whiten_advantages:
            advantages = whiten_global(acc, advantages, mask)
        t_rollout = time.time() - t0

        # ---- PPO epochs over minibatches ----------------------------------------------------
        sums: dict[str, float] = {}
        g = torch.Generator().manual_seed(_seed(cfg.train.seed, step, s.rank) + 1)
        n_mb = cfg.ppo.num_minibatches
        for epoch in range(cfg.ppo.ppo_epochs):
            for k, mb in enumerate(torch.randperm(N, generator=g).to(s.device).chunk(n_mb)):
                tokens = mask[mb].sum() if cfg.ppo.loss_aggregation == "token_mean" else torch.tensor(float(len(mb)), device=s.device)
                normalizer = acc.reduce(tokens.clone(), "sum").item()
                micro = by_length(roll, mb).split(cfg.train.micro_batch_size)
                if ptx_feats:
                    _ptx_backward(cfg, s, policy, ptx_feats, pad, step, epoch * n_mb + k, sums)
                for j, rows in enumerate(micro):
                    sync = ExitStack()
                    if j < len(micro) - 1:
                        sync.enter_context(acc.no_sync(policy))
                        sync.enter_context(acc.no_sync(critic))
                    with sync, acc.autocast():
                        inputs, r = forward_window(roll, rows)
                        m = mask[rows, :r]
                        logits = response_logits(policy, inputs, r, T)
                        logps = token_logps(logits, response_labels(roll, rows, r))
                        pg, pg_m = policy_loss(logps, old_logps[rows, :r], advantages[rows, :r], m, cfg.ppo.clip_eps,
                                               normalizer, cfg.ppo.loss_aggregation)
                        v = token_values(critic, **inputs)[:, -r:]
                        vf, vf_m = value_loss(v, values[rows, :r], returns[rows, :r], m, cfg.ppo.value_clip_eps,
                                              normalizer, cfg.ppo.loss_aggregation)
                        acc.backward((pg + cfg.ppo.vf_coef * vf) * s.world_size)
                    with torch.no_grad():
                        # Weights that make the sums means over optimizer steps (losses: this process's
                        # share of each global minibatch loss, times world size, mean over processes).
                        share = len(rows) / N / cfg.ppo.ppo_epochs
                        _add(sums, "loss/policy", pg.item() * s.world_size / opt_steps)
                        _add(sums, "loss/value", vf.item() * s.world_size / opt_steps)
                        _add(sums, "policy/clipfrac", pg_m["clipfrac"].item() * share)
                        _add(sums, "policy/approx_kl", pg_m["approx_kl"].item() * share)
                        _add(sums, "value/clipfrac", vf_m["clipfrac"].item() * share)
                if cfg.train.max_grad_norm > 0:
                    gp = acc.clip_grad_norm_(policy.parameters(), cfg.train.max_grad_norm)
                    gc = acc.clip_grad_norm_(critic.parameters(), cfg.train.max_grad_norm)
                    _add(sums, "train/grad_norm_policy", float(gp) / opt_steps)
                    _add(sums, "train/grad_norm_critic", float(gc) / opt_steps)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        backend.sync_weights(acc.unwrap_model(policy))  # the next rollout samples the updated policy (hf: no-op)

        # ---- metrics, beta update, checkpoint -----------------------------------------------
        seq_kl = (kl_per_token(old_logps, ref_logps, mask, "k1")).sum(1)  # (N,) sequence KL in nats
        local = {
            "reward/mean": scored.rewards.mean().item(),
            "reward/std": scored.rewards.std(unbiased=False).item(),
            "reward/score": scores.mean().item(),
            "reward/total": total_reward,
            "kl/mean": seq_kl.mean().item(),
            "kl/penalty": kl.sum(1).mean().item(),
            "policy/entropy": masked_mean(entropy, mask).item(),
            "value/explained_variance": explained_variance(values, returns, mask).item(),
            "value/mean": masked_mean(values, mask).item(),
            "response/length": mask.sum(1).mean().item(),
            "response/eos_rate": finished.mean().item(),
            **sums,
            **scored.extras,
        }
        if use_gold:
            from rlhfkit.lab import gold_score

            local["gold/mean"] = sum(gold_score([p + r for p, r in zip(texts, responses, strict=True)])) / N
        metrics = _mean_over_processes(acc, local)
        metrics["kl/beta"] = kl_ctl.beta  # the beta these rewards used
        kl_ctl.update(metrics["kl/mean"], cfg.train.batch_size)
        metrics.update({"train/lr": scheduler.get_last_lr()[0], "time/rollout_s": t_rollout,
                        "time/step_s": time.time() - t0, "time/elapsed_s": time.time() - loop_start,
                        "perf/episodes_per_s": cfg.train.batch_size / (time.time() - t0)})
        if eval_text and cfg.log.eval_every and ((step + 1) % cfg.log.eval_every == 0 or step + 1 == total):
            metrics["eval/perplexity"] = perplexity(policy, eval_text, pad, cfg.train.micro_batch_size, acc)["perplexity"]
        s.log(step + 1, metrics)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", kl=f"{metrics['kl/mean']:.2f}")
        if watch.after_log(step + 1, metrics, policy):
            break
        s.maybe_save(step + 1, total, {"policy": policy, "critic": critic}, optimizer, scheduler,
                     extra={"kl_controller": kl_ctl.state_dict()}, tokenizer=tokenizer)
    bar.close()
    summary = watch.finish(policy)  # keep_best: final/ = the best step's policy (the critic stays the last step's)
    summary = {"steps": summary.get("stopped_at", total), "kl_beta": kl_ctl.beta, **summary,
               "lab": from_lab(cfg.model.name_or_path), "reward/source": cfg.reward.source, **heldout.provenance()}
    if eval_text:
        summary["eval_perplexity"] = perplexity(policy, eval_text, pad, cfg.train.micro_batch_size, acc)["perplexity"]
    return s.finish({"policy": policy, "critic": critic}, tokenizer, primary="policy", summary=summary)


def _ptx_backward(cfg: PPOConfig, s: TrainSession, policy, feats: list[dict], pad: int, step: int, update: int,
                  sums: dict) -> None:
    """PPO-ptx (InstructGPT eq. 2): gamma_ptx * NLL of a pretraining batch, one per minibatch."""
    from rlhfkit.data.tokenize import collate_demonstrations

    g = torch.Generator().manual_seed(_seed(cfg.train.seed, step, s.rank) + 7_919 * (update + 1))
    pick = torch.randint(len(feats), (cfg.data.ptx_batch_size,), generator=g).tolist()
    batch = {k: v.to(s.device) for k, v in collate_demonstrations([feats[i] for i in pick], pad).items()}
    with s.accelerator.no_sync(policy), s.accelerator.autocast():
        logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, _ = sft_loss(logits, batch["labels"])
        s.accelerator.backward(cfg.ppo.ptx_coef * loss)  # per-process mean; DDP averages over processes
    _add(sums, "loss/ptx", loss.item() / (cfg.ppo.ppo_epochs * cfg.ppo.num_minibatches))  # mean per update


def _seed(seed: int, step: int, k: int) -> int:
    """A per-(run seed, step, k) seed, so a resumed run samples the same responses; k is the global
    batch position of a generate call's first prompt (sampling) or the process rank (minibatches, ptx)."""
    return (seed * 1_000_003 + step * 7_919 + k * 104_729) % (2**31 - 1)


def _add(sums: dict[str, float], key: str, value: float) -> None:
    sums[key] = sums.get(key, 0.0) + value


def _mean_over_processes(acc, local: dict[str, float]) -> dict[str, float]:
    if acc.num_processes == 1:
        return dict(local)
    keys = sorted(local)
    vec = acc.reduce(torch.tensor([local[k] for k in keys], device=acc.device, dtype=torch.float64), "mean")
    return dict(zip(keys, vec.tolist(), strict=True))
