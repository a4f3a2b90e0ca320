"""End to end on the lab: compare (base model, K = 4, simulated annotator) -> reward -> the RM agrees
with GOLD on held-out pairs far above chance, better than early in training, and its normalised
reward is centred on the base policy's samples."""

from __future__ import annotations

import json

import pytest
import torch

from rlhfkit.config import load_config


@pytest.mark.slow
def test_reward_model_learns_gold_preferences_on_the_lab(tmp_path):
    from rlhfkit.jobs import compare
    from rlhfkit.lab import ensure_lab
    from rlhfkit.models.reward import load_reward_model
    from rlhfkit.recipes import reward

    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ensure_lab()

        def collect(prompts, n, seed, out):
            cfg = load_config(compare.CompareConfig, None, [
                "policy.name_or_path=lab", f"prompts={prompts}", f"limit={n}", "k=4", "sampling.max_new_tokens=24",
                "batch_size=64", f"seed={seed}", "annotator.name=simulated",
                f"annotator.options={{temperature: 0.05, seed: {seed}}}"])
            return compare.run(cfg, out)

        # Short responses (24 tokens) keep this fast; 384 ranked prompts = 2304 pairs, ~2.7 epochs.
        train = collect("lab:prompts_train", 384, 0, tmp_path / "train.jsonl")
        held = collect("lab:prompts_eval", 48, 1, tmp_path / "held.jsonl")
        cfg = load_config(reward.RewardConfig, None, [
            "model.name_or_path=lab", f"data.train={train}", f"data.eval={held}", "train.batch_size=16",
            "train.micro_batch_size=16", "train.lr=2e-3", "train.max_steps=64", "train.warmup_ratio=0.1",
            "log.eval_every=16", "log.save_every=0", "log.progress=false", "normalize.num_prompts=32",
            "normalize.max_new_tokens=24"])
        final = reward.run(cfg, tmp_path / "rm")
        rows = [json.loads(x) for x in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in rows if "gold/agreement" in r]
        first, last = evals[0], evals[-1]
        # Normalised on fresh base-policy samples; the held-out responses come from the same policy.
        records = [json.loads(x) for x in held.read_text().splitlines()]
        scores = load_reward_model(final).score([r["prompt"] for r in records for _ in r["responses"]],
                                                [x for r in records for x in r["responses"]]).rewards
    finally:
        torch.set_num_threads(n_threads)
    # Measured: 0.61 (lab built by older code) or 0.68 (current lab) after 16 steps -> 0.70-0.73 after
    # 64 (chance 0.5; the annotator's own agreement 0.95). On the current lab the RM is near its final
    # agreement early, so "it learned" is judged by the training loss: mean of the first 8 steps vs
    # the last 8 (on the current lab the logged loss went 0.67 at step 16 -> 0.53 at step 64).
    assert last["gold/agreement"] > 0.68, evals
    assert last["gold/agreement"] >= first["gold/agreement"], evals
    losses = [r["loss/reward"] for r in rows if "loss/reward" in r]
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8 - 0.05, losses
    assert last["gold/annotator_agreement"] > 0.9  # T = 0.05 is a careful annotator
    assert abs(scores.mean().item()) < 0.5 and 0.5 < scores.std().item() < 2.0
