"""`rlhfkit iterate` under 2 processes (torchrun, gloo, CPU) matches 1 process: the round's
comparisons are byte-identical (compare shards its chunks, the main process alone annotates with a
stateful annotator), the RM trained on them takes the same first step (its step-1 gradient agrees
within the float32 bound of test_reward_distributed), and the `iterate` metrics row, written once
by the main process after its held-out evaluation, has the same numbers.

PPO's first gradients are not compared here (test_ppo_distributed does, with one RM for both runs).
In iterate each run trains its own RM, and the Bradley-Terry loss cannot see a constant shift of the
score: along such directions the RM's gradient is float noise, which Adam turns into steps of ±lr,
so the two RMs give rewards (and, with critic.init=reward, values) offset by a small constant that
differs between the runs, and PPO's step-1 gradients differ by far more than float rounding (seen
once in CI: parameter 0 outside the 8.6e-6 bound)."""

from __future__ import annotations

import itertools
import json

import pytest
from conftest import build_tiny_model, torchrun, write_jsonl
from test_reward_distributed import assert_first_gradients_match, first_gradient_atol

from rlhfkit.config import load_config
from rlhfkit.pipeline import iterate


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    model = build_tiny_model(tmp_path / "m")
    words = ["the", "a", "movie", "film", "plot", "acting", "story", "cast"]
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"{a} {b} was"} for a, b in itertools.product(words, words)][:24])
    args = [
        f"policy.name_or_path={model}", f"prompts={prompts}", "rounds=1", "label_budget=12",
        f"eval.prompts={prompts}", "eval.examples=4", "eval.gold=false",
        "compare.annotator.name=test_compare_distributed:coin", "compare.k=3", "compare.sampling.max_new_tokens=6",
        "compare.batch_size=3",
        "reward.normalize.source=none", "reward.data.eval_fraction=0", "reward.data.gold=none", "reward.train.epochs=1",
        "reward.train.batch_size=4", "reward.train.micro_batch_size=2", "reward.train.lr=1e-3", "reward.log.progress=false",
        f"ppo.data.prompts={prompts}", "ppo.eval.text=null", "ppo.train.max_steps=2", "ppo.train.batch_size=8",
        "ppo.train.micro_batch_size=2", "ppo.rollout.generate_batch_size=2", "ppo.rollout.max_new_tokens=6",
        "ppo.ppo.ppo_epochs=2", "ppo.train.lr=1e-2", "ppo.critic.init=reward", "ppo.log.progress=false",
        "ppo.log.save_every=1", "ppo.log.keep_checkpoints=0", "reward.log.save_every=1", "reward.log.keep_checkpoints=0",
    ]
    iterate.run(load_config(iterate.IterateConfig, None, args), tmp_path / "one")  # 1 process: this one
    torchrun("iterate", 2, tmp_path / "two", args, timeout=300)
    one, two = tmp_path / "one", tmp_path / "two"

    comparisons = (one / "round-1" / "comparisons.jsonl").read_text()
    assert len(comparisons.splitlines()) >= 10
    assert (two / "round-1" / "comparisons.jsonl").read_text() == comparisons
    assert (two / "round-1" / "all_comparisons.jsonl").read_text() == comparisons

    rows = {d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, two)}
    assert [r["step"] for r in rows[two]] == [1]  # one row, from the main process only
    a, b = rows[one][0], rows[two][0]
    assert a.keys() == b.keys() and {"eval/kl", "eval/response_length", "ppo/reward/mean"} <= a.keys()
    for k in a:
        assert a[k] == (pytest.approx(b[k], rel=1e-3, abs=1e-5) if isinstance(a[k], float) else b[k]), k

    # the RM: 4 prompts a step in micro-batches of 2 (M = 2)
    assert_first_gradients_match(one / "round-1" / "rm", two / "round-1" / "rm", first_gradient_atol(2))
    assert (one / "round-1" / "ppo" / "final").is_dir() and (two / "round-1" / "ppo" / "final").is_dir()
