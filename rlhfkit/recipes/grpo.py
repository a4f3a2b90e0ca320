"""GRPO: group-relative policy optimisation, no critic (Shao et al. 2024, DeepSeekMath sec. 4).

    for each step:
        x_1..x_B/G  prompts;  y_i,1..y_i,G ~ pi_old(. | x_i)              G responses per prompt
        r_i,g = reward(x_i, y_i,g)                                       an RM, rules, lab:gold, or several
        A_i,g = (r_i,g - mean_g r_i) / (std_g r_i + eps)   on every token of y_i,g    (losses.advantages.grpo)
        L = clipped surrogate(A) + beta * k3 KL(pi || pi_ref) per token  (KL in the loss, not the reward)

The loop is `recipes.online.run` (shared with PPO and RLOO); these are GRPO's defaults. One config
key gives its variants: `algo.estimator=dr_grpo` (Dr. GRPO, Liu et al. 2025: no std division,
loss summed over tokens / a constant), `algo.clip_eps_high=0.28` (DAPO clip-higher),
`algo.drop_uniform_groups=true` (DAPO: groups whose rewards are all equal carry no signal).
`train.batch_size` counts responses: B / G prompts per step, each process holding whole groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import LogConfig, ModelConfig, TrainConfig, doc, section
from rlhfkit.monitor.alarms import MonitorConfig
from rlhfkit.recipes import online
from rlhfkit.recipes.online import (
    AlgoConfig,
    DataConfig,
    EvalConfig,
    RewardConfig,
    RolloutConfig,
    train_section,
)


@dataclass(frozen=True)
class GRPOConfig:
    model: ModelConfig = section(ModelConfig, "policy to optimise (usually the SFT model)")
    ref_model: str | None = doc(None, "frozen reference for the KL term; null = the initial policy")
    reward: RewardConfig = section(RewardConfig, "reward source(s)")
    rollout: RolloutConfig = section(RolloutConfig, "sampling: G responses per prompt", group_size=8)
    algo: AlgoConfig = section(AlgoConfig, "GRPO: estimator, updates per batch, clipping, KL term", estimator="grpo",
                               ppo_epochs=1, kl_coef=0.04, kl_estimator="k3")
    data: DataConfig = section(DataConfig, "prompts")
    eval: EvalConfig = section(EvalConfig, "evaluation")
    train: TrainConfig = train_section(lr=1e-5, schedule="constant", warmup_ratio=0.0, batch_size=64,
                                       micro_batch_size=16, max_steps=100)
    log: LogConfig = section(LogConfig, "logging, evaluation and checkpoints")
    monitor: MonitorConfig = section(MonitorConfig, "reward-hacking alarms during training and what they do")


def run(cfg: GRPOConfig, out: str | Path, resume: bool = False) -> Path:
    return online.run(cfg, out, resume, stage="grpo")
