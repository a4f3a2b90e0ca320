"""RLOO: REINFORCE with a leave-one-out baseline, no critic (Ahmadian et al. 2024, "Back to Basics").

    for each step:
        x_1..x_B/G  prompts;  y_i,1..y_i,G ~ pi(. | x_i)                  G responses per prompt
        R_i,g = reward(x_i, y_i,g) - beta * sum_t kl_t                     KL in the (sequence) reward
        A_i,g = R_i,g - mean of the other G - 1 rewards to x_i   on every token    (losses.advantages.rloo)
        one on-policy update:  L = -A * log pi (ratio 1; the clipped surrogate reduces to it)

The loop is `recipes.online.run` (shared with PPO and GRPO); these are RLOO's defaults. One config
key gives REINFORCE++ (Hu 2025): `algo.estimator=reinforce_pp` (per-token KL in the reward,
returns to the end, advantages normalised over the global batch) or `reinforce_pp_baseline`
(the group mean subtracted first). `train.batch_size` counts responses.
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
class RLOOConfig:
    model: ModelConfig = section(ModelConfig, "policy to optimise (usually the SFT model)")
    ref_model: str | None = doc(None, "frozen reference for the KL penalty; null = the initial policy")
    reward: RewardConfig = section(RewardConfig, "reward source(s)")
    rollout: RolloutConfig = section(RolloutConfig, "sampling: G responses per prompt", group_size=4)
    algo: AlgoConfig = section(AlgoConfig, "RLOO: estimator, updates per batch, KL penalty", estimator="rloo",
                               ppo_epochs=1, kl_coef=0.05, loss_aggregation="seq_mean")
    data: DataConfig = section(DataConfig, "prompts")
    eval: EvalConfig = section(EvalConfig, "evaluation")
    train: TrainConfig = train_section(lr=1e-5, schedule="constant", warmup_ratio=0.0, batch_size=64,
                                       micro_batch_size=16, max_steps=100)
    log: LogConfig = section(LogConfig, "logging, evaluation and checkpoints")
    monitor: MonitorConfig = section(MonitorConfig, "reward-hacking alarms during training and what they do")


def run(cfg: RLOOConfig, out: str | Path, resume: bool = False) -> Path:
    return online.run(cfg, out, resume, stage="rloo")
