"""DPO with 2 processes (gloo, CPU) matches 1 process with the same global batch: the sharded
reference pass, the global pair-count normaliser and the metric reduction agree to float rounding."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_model, torchrun, write_jsonl
from test_dpo_recipe import random_comparisons
from test_reward_distributed import (
    FIRST_STEP_SAVED,
    assert_first_gradients_match,
    first_gradient_atol,
)

BETA, REF_ATOL = 0.5, 1e-5


def dpo_first_gradient_atol(micro_batches: int) -> float:
    """`first_gradient_atol` plus what the reference log-probs add: each pair's gradient is weighted
    by β·σ(−β·margin), and the margin holds ref_chosen − ref_rejected, so reference log-probs that
    differ by ≤ REF_ATOL (asserted below; the reference pass is sharded, so its batches differ)
    change that weight by ≤ β·2·REF_ATOL relative (|d log σ(x)/dx| ≤ 1): + 1e-5·‖m‖∞ for β = 0.5."""
    return first_gradient_atol(micro_batches) + BETA * 2 * REF_ATOL


def _launch(nproc: int, model, train, out) -> list[dict]:
    args = [f"model.name_or_path={model}", f"data.train={train}", "sampling.prompts=null", "sampling.text=null",
            "train.batch_size=8", "train.micro_batch_size=2", "train.lr=1e-2", "train.max_steps=4", f"beta={BETA}",
            "log.progress=false", "log.eval_every=0", *FIRST_STEP_SAVED]
    return torchrun("dpo", nproc, out, args)


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    """Step-1 gradients within `dpo_first_gradient_atol(4)`, not the final weights (Adam turns the
    float noise of zero-gradient parameters into steps up to lr; see test_reward_distributed). The
    logged metrics (rel 1e-4, abs 1e-5) after step 1 depend on weights after Adam steps, where that
    noise enters: measured ≤ 3e-7 absolute; a wrong normaliser or a shard seen twice moves them by
    ≥ 1e-2. The reference log-probs: sums of ≤ 16 token log-probs of size ≤ 30 from forward passes
    whose batches differ; measured 1e-6 apart, asserted within REF_ATOL."""
    model = build_tiny_model(tmp_path / "m")
    train = write_jsonl(tmp_path / "train.jsonl", random_comparisons(16, seed=0))
    one = _launch(1, model, train, tmp_path / "one")
    two = _launch(2, model, train, tmp_path / "two")
    assert len(one) == len(two) == 4
    for a, b in zip(one, two, strict=True):
        for key in ("loss/dpo", "rewards/margin", "rewards/accuracy", "logps/chosen", "train/grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    from safetensors.torch import load_file

    ref_one, ref_two = (load_file(str(tmp_path / d / "ref_logps.safetensors")) for d in ("one", "two"))
    torch.testing.assert_close(ref_one["train"], ref_two["train"], rtol=0, atol=REF_ATOL)
    assert_first_gradients_match(tmp_path / "one", tmp_path / "two", dpo_first_gradient_atol(4))
