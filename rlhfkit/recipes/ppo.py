"""PPO against a reward with a KL penalty to the frozen SFT reference: maximise E[R(x, y)] - beta KL(pi || pi_ref).

InstructGPT (Ouyang et al. 2022) / Ziegler et al. 2019 (lm-human-preferences), one step:

    x     = global batch of prompts (deterministic in seed, step) -> this process's shard
    y     ~ pi(. | x) at temperature T, cut at the first EOS            (experience.make_experience)
    R     = reward(x, y) + missing_eos_penalty * [y never ended]        (rewards.build_reward)
    old_logps, ref_logps, values = pi, pi_ref, critic on y (no grad, same temperature T)
    r_t   = -beta * kl_t (+ R at the last token);  A, returns = GAE(r, values; gamma, lam)  (losses.advantages "gae")
    ppo_epochs x num_minibatches:  L = clipped surrogate + vf_coef * clipped value loss (+ ptx NLL)
    beta  <- adaptive controller(measured KL)                          (losses.kl_control)

The loop is `recipes.online.run`, which GRPO and RLOO share; this file holds PPO's config and
defaults. Its algorithm section is named `ppo:` (the critic-free verbs call theirs `algo:`).
With `model.lora.enabled`, policy and critic train LoRA adapters (the critic's `score` head in
full) and the reference is the policy with its adapters disabled: no second copy of the weights.

Policy and critic share one AdamW (two sets of parameter groups, the critic's at `critic.lr`),
so one optimizer/scheduler checkpoint covers both; gradients are clipped per model. Every loss
is normalised by the global token count of its minibatch (all processes), so micro-batching and
process count do not change it. Dropout is off in the policy, reference, critic and RM.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import LogConfig, ModelConfig, TrainConfig, doc, section
from rlhfkit.monitor.alarms import MonitorConfig
from rlhfkit.recipes import online
from rlhfkit.recipes.online import (
    AlgoConfig,
    CriticConfig,
    DataConfig,
    EvalConfig,
    RewardConfig,
    RolloutConfig,
    train_section,
)

# The section classes under their PPO names (configs and tests written against earlier releases).
PPOAlgoConfig, PPORewardConfig, PPORolloutConfig = AlgoConfig, RewardConfig, RolloutConfig
PPOCriticConfig, PPODataConfig, PPOEvalConfig = CriticConfig, DataConfig, EvalConfig


@dataclass(frozen=True)
class PPOConfig:
    model: ModelConfig = section(ModelConfig, "policy to optimise (usually the SFT model)")
    ref_model: str | None = doc(None, "frozen reference for the KL penalty; null = the initial policy")
    reward: RewardConfig = section(RewardConfig, "reward source")
    critic: CriticConfig = section(CriticConfig, "value model")
    rollout: RolloutConfig = section(RolloutConfig, "sampling")
    ppo: AlgoConfig = section(AlgoConfig, "PPO: advantage estimator (gae), epochs, clipping, KL penalty")
    data: DataConfig = section(DataConfig, "prompts and ptx text")
    eval: EvalConfig = section(EvalConfig, "evaluation")
    train: TrainConfig = train_section(lr=1e-5, schedule="constant", warmup_ratio=0.0, batch_size=64, micro_batch_size=16,
                                  max_steps=100)
    log: LogConfig = section(LogConfig, "logging, evaluation and checkpoints")
    monitor: MonitorConfig = section(MonitorConfig, "reward-hacking alarms during training and what they do")

    @property
    def algo(self) -> AlgoConfig:
        return self.ppo


def run(cfg: PPOConfig, out: str | Path, resume: bool = False) -> Path:
    return online.run(cfg, out, resume, stage="ppo")
