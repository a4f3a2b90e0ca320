"""2 processes (gloo, CPU) give the same gradients and losses as 1 process with the same global batch.
(Not the final weights: Adam turns the float noise in zero-gradient parameters, the attention key
biases, into steps of any size up to lr; see test_reward_distributed.)"""

from __future__ import annotations

import pytest
from conftest import build_tiny_model, torchrun
from test_reward_distributed import (
    FIRST_STEP_SAVED,
    assert_first_gradients_match,
    first_gradient_atol,
)


def _launch(nproc: int, model, train, eval_, out) -> list[dict]:
    args = [f"model.name_or_path={model}", f"data.train={train}", f"data.eval={eval_}", "train.batch_size=8",
            "train.micro_batch_size=2", "train.lr=1e-2", "train.max_steps=4", "log.progress=false", "log.save_every=0",
            "log.eval_every=2", *FIRST_STEP_SAVED]
    return torchrun("sft", nproc, out, args)


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, demos):
    """Step-1 gradients within `first_gradient_atol(4)` (8 demonstrations, micro-batches of 2); the
    step-1 loss, a sum of 4 non-negative micro-batch token sums reduced in another order, within
    6·U (rel 1e-6). Later losses and the eval perplexity (rel 1e-4) depend on weights after Adam
    steps, where float noise enters (measured ≤ 1e-6 relative); a shard seen twice or a wrong token
    normaliser moves them by ≥ 1e-2."""
    model = build_tiny_model(tmp_path / "m")
    one = _launch(1, model, *demos, tmp_path / "one")
    two = _launch(2, model, *demos, tmp_path / "two")
    assert len(one) == len(two) == 4
    assert_first_gradients_match(tmp_path / "one", tmp_path / "two", first_gradient_atol(4))
    assert one[0]["loss/sft"] == pytest.approx(two[0]["loss/sft"], rel=1e-6)
    for a, b in zip(one, two, strict=True):
        assert a["loss/sft"] == pytest.approx(b["loss/sft"], rel=1e-4)
        assert a["train/tokens"] == b["train/tokens"]
        if "eval/perplexity" in a:
            assert a["eval/perplexity"] == pytest.approx(b["eval/perplexity"], rel=1e-4)
