"""End to end on the lab: PPO against the gold judge (PPO-GT) must raise held-out gold."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.config import load_config


@pytest.mark.slow
def test_ppo_gt_raises_gold_over_the_start(tmp_path):
    """From the lab base model, a few PPO-GT steps (reward = gold, moderate beta) raise the gold
    mean of samples on held-out prompts (same prompts, same seed before and after) clearly.

    The bound: one sample on each of the n = 160 lab eval prompts per model. Lab base samples have a
    gold SD of about 0.6 (the lab build prints it), so if PPO changed nothing the difference of the
    two means would have SD at most 0.6 * sqrt(2 / 160) = 0.067 (treating the two sets as independent;
    sharing prompts only lowers it). The test asks for 3 of those, 0.2. These 20 steps at lr 3e-4 gain
    0.38-0.66 on two evaluation seeds of one lab build. The earlier 12 steps at lr 1e-4 gained 0.05-0.17
    on 64 prompts, against a bound of 0.1 that the noise alone (SD 0.11) could cross or miss."""
    from rlhfkit.config import ModelConfig
    from rlhfkit.evaluate import heldout_metrics
    from rlhfkit.lab import ensure_lab
    from rlhfkit.recipes.ppo import PPOConfig, PPORolloutConfig, run

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ensure_lab()
        steps, n = 20, 160
        cfg = load_config(PPOConfig, None, [
            "model.name_or_path=lab", "reward.source=lab:gold", "ppo.kl_coef=0.02", f"train.max_steps={steps}",
            "train.batch_size=32", "train.micro_batch_size=32", "train.lr=3e-4", "rollout.max_new_tokens=24",
            "ppo.ppo_epochs=4", "eval.text=null", "log.progress=false", "log.save_every=0",
        ])
        final = run(cfg, tmp_path / "ppo")
        rollout = PPORolloutConfig(max_new_tokens=24)
        before = heldout_metrics("lab", ModelConfig(), "lab:prompts_eval", n, rollout)
        after = heldout_metrics(str(final), ModelConfig(), "lab:prompts_eval", n, rollout)
    finally:
        torch.set_num_threads(n)
    assert after["gold/mean"] > before["gold/mean"] + 3 * 0.6 * (2 / n) ** 0.5, (before, after)
    assert 0 < after["eval/kl"] < 20, after  # moved, but stayed near the reference
