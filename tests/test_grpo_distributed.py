"""GRPO, RLOO and REINFORCE++ with 2 processes (gloo, CPU) match 1 process with the same global
batch: a process takes whole prompts, each with its G responses, so group statistics stay in one
process; responses are sampled with seeds from their global batch positions (both runs sample the
same texts); losses are normalised by the global token count; REINFORCE++ normalises its
advantages over the global batch through the all-reduce (`losses.advantages.reinforce_pp`).

Compared, as in test_ppo_distributed (see there and test_reward_distributed for why not the final
weights): step 1's rollout metrics and the step-1 gradient (Adam's first moment in the step-1
checkpoint). Micro-batches of one response, so each micro-batch gradient is the same float32
tensor in both runs (a single row's forward pass does not depend on what else is in the batch)
and only the order of the M = 8 terms of the sum differs: `first_gradient_atol(8)` = 224 U, under
its one assumption that a micro-batch gradient entry is at most the batch's ‖g‖∞. Group-centred
advantages make the rows' gradients partly cancel, so that assumption is weaker here than for
SFT, but the bound has room for ~90x cancellation: measured on one Intel CPU 2.5 U (GRPO),
2.5 U (RLOO), 2.2 U (REINFORCE++, whose bound adds the whitening term of `ppo_first_gradient_atol`,
40 tokens: 304 U). About 80 s per case on 2 busy cores.
"""

from __future__ import annotations

import pytest
from conftest import (
    assert_metrics_match,
    build_tiny_model,
    launch_one_and_two,
    random_demos,
    write_jsonl,
)
from test_ppo_distributed import ROLLOUT_KEYS, ppo_first_gradient_atol
from test_reward_distributed import (
    FIRST_STEP_SAVED,
    assert_first_gradients_match,
    first_gradient_atol,
)


def char_count(prompts, responses):
    return [float(len(r)) for r in responses]


@pytest.mark.slow
@pytest.mark.parametrize("verb, extra", [
    ("grpo", []),
    ("rloo", []),
    ("rloo", ["algo.estimator=reinforce_pp"]),
], ids=["grpo", "rloo", "reinforce_pp"])
def test_two_processes_match_one(tmp_path, verb, extra):
    """8 responses a step (2 prompts x G = 4): each process samples and scores one whole group.
    Step 1's rollout metrics within rel 1e-4 / abs 1e-5 (the same samples scored by the same
    weights; only means of process means vs global means differ, a few U); the step-1 gradient
    within the bound above. A group split across processes, per-process normalisation or a
    normaliser off by the process count change the gradient by a factor, far outside it."""
    model = build_tiny_model(tmp_path / "m")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": d["prompt"]} for d in random_demos(16, 0)])
    args = [f"model.name_or_path={model}", f"data.prompts={prompts}", f"reward.source={__name__}:char_count",
            "eval.text=null", "eval.gold=none", "train.batch_size=8", "train.micro_batch_size=1",
            "rollout.group_size=4", "rollout.generate_batch_size=4", "rollout.max_new_tokens=5", "train.max_steps=2",
            "train.lr=1e-2", "log.progress=false", *FIRST_STEP_SAVED, *extra]
    one, two = launch_one_and_two(verb, args, tmp_path, 2)
    assert_metrics_match(one[:1], two[:1], ROLLOUT_KEYS)
    assert one[0]["reward/std"] > 0  # the groups carry a signal
    atol = ppo_first_gradient_atol(8, 8 * 5) if extra else first_gradient_atol(8)
    assert_first_gradients_match(tmp_path / "one", tmp_path / "two", atol)
