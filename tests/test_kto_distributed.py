"""KTO with 2 processes (gloo, CPU) matches 1 process with the same global batch: the sharded
reference pass (examples and mismatched pairs), z0 as the mean over the whole global batch's
mismatched pairs (summed over processes), the global example count and the metric reduction agree
to float rounding."""

from __future__ import annotations

import pytest
from conftest import (
    assert_metrics_match,
    assert_reference_logps_match,
    build_tiny_model,
    launch_one_and_two,
    offline_parity_args,
    write_jsonl,
)
from test_dpo_distributed import REF_ATOL
from test_kto_recipe import random_feedback
from test_reward_distributed import (
    FIRST_STEP_SAVED,
    assert_first_gradients_match,
    first_gradient_atol,
)

BETA = 0.5


def kto_first_gradient_atol(micro_batches: int) -> float:
    """`first_gradient_atol` plus what the reference log-probs and z0 add: an example's gradient is
    weighted by lambda beta sigma'(beta (rho - z0)) (desirable; the mirror for undesirable), and
    |d log sigma'(x) / dx| = |1 - 2 sigma(x)| <= 1, so an argument moved by beta * delta changes the
    weight by <= beta * delta relative. rho holds the example's reference log-prob (sharded pass,
    <= REF_ATOL apart, asserted below) and z0 the mismatched pairs' mean (their reference values
    <= REF_ATOL apart; their policy log-probs come from the same micro-batches in both runs, summed
    in another order: ~B U, negligible): delta <= 2 REF_ATOL, + 1e-5 ||m||inf for beta = 0.5."""
    return first_gradient_atol(micro_batches) + BETA * 2 * REF_ATOL


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    """Step-1 gradients within `kto_first_gradient_atol(4)`; logged metrics (rel 1e-4, abs 1e-5) as
    in test_dpo_distributed: after step 1 they depend on weights after Adam steps (float noise,
    measured <= 1e-6); z0 (`kl`) from a per-process mean instead of the global one, a shard seen
    twice or a wrong normaliser moves them by >= 1e-2."""
    model = build_tiny_model(tmp_path / "m")
    train = write_jsonl(tmp_path / "train.jsonl", random_feedback(32, seed=0))
    one, two = launch_one_and_two("kto", offline_parity_args(model, train, f"beta={BETA}", *FIRST_STEP_SAVED), tmp_path, 4)
    assert one[-1]["kl"] > 0.01, "the test needs z0 away from its clamp at 0"
    assert_metrics_match(one, two, ("loss/kto", "kl", "rewards/margin", "rewards/chosen", "logps/chosen", "train/grad_norm"))
    assert_reference_logps_match(tmp_path / "one", tmp_path / "two", REF_ATOL)
    assert_first_gradients_match(tmp_path / "one", tmp_path / "two", kto_first_gradient_atol(4))
