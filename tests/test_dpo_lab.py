"""End to end on the lab: comparisons from the base model ranked by the simulated annotator ->
`rlhfkit dpo` -> held-out gold of the policy's samples clearly above the base model's."""

from __future__ import annotations

import json

import pytest
import torch

from rlhfkit.config import load_config


@pytest.mark.slow
def test_dpo_raises_gold_over_the_start(tmp_path):
    """160 prompts x K=4 (all 6 pairs each), 24 DPO steps of 32 pairs. The recipe's own sampling
    evaluation (96 held-out prompts, seed 1234) after training must beat the same evaluation of
    the starting model by a margin well above the ~0.05 standard error of each mean."""
    from rlhfkit.config import ModelConfig
    from rlhfkit.data import read_records
    from rlhfkit.evaluate import evaluate_policy
    from rlhfkit.jobs import compare
    from rlhfkit.lab import ensure_lab
    from rlhfkit.models.loading import load_policy, load_tokenizer
    from rlhfkit.recipes import dpo
    from rlhfkit.rollout import SamplingParams

    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ensure_lab()
        data = compare.run(load_config(compare.CompareConfig, None, [
            "policy.name_or_path=lab", "prompts=lab:prompts_train", "limit=160", "k=4", "sampling.max_new_tokens=40",
            "batch_size=64", "seed=0"]), tmp_path / "comparisons.jsonl")
        dpo.run(load_config(dpo.DPOConfig, None, [
            "model.name_or_path=lab", f"data.train={data}", "beta=0.1", "train.lr=5e-4", "train.max_steps=24",
            "train.batch_size=32", "train.micro_batch_size=32", "train.schedule=constant", "train.warmup_ratio=0.1",
            "log.eval_every=0", "log.save_every=0", "log.progress=false", "sampling.prompts=lab:prompts_eval",
            "sampling.num_prompts=96", "sampling.max_new_tokens=40", "sampling.seed=1234", "sampling.text=null"]),
            tmp_path / "dpo")
        rows = [json.loads(x) for x in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
        prompts = [r.prompt for r in read_records("lab:prompts_eval", "prompt")][:96]
        before, _ = evaluate_policy(load_policy(ModelConfig()), load_tokenizer(ModelConfig()), prompts,
                                    SamplingParams(max_new_tokens=40), gold=True, seed=1234)
    finally:
        torch.set_num_threads(n_threads)
    after = rows[-1]
    assert after["step"] == 24 and after["rewards/margin"] > 0
    assert after["gold/mean"] > before["gold/mean"] + 0.1, (before, after)
    assert 0.1 < after["kl/mean"] < 20, after  # it moved, and stayed near the reference
