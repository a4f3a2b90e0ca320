"""benchmarks/orpo.py: the two sides it times train on the same tokens and the same odds-ratio term."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import orpo as bench  # noqa: E402

pytest.importorskip("trl.experimental.orpo", reason="trl.experimental.orpo is not available")


@pytest.mark.slow
def test_orpo_benchmark_sides_share_tokens_and_the_first_odds_ratio_term(tmp_path):
    """Two steps of 4 pairs on each side. The token check raises if TRL's rows hold other ids.
    At step 1 both sides see identical weights, so TRL's log_odds_ratio (mean log sigma(log odds))
    and log_odds_chosen equal -rlhfkit's loss/or and its rewards/margin up to float32 rounding.
    Bound: a response's mean log-prob is a sum of n <= 48 token log-probs (|each| ~ 7 for a
    ~1k-word vocabulary), summed in another order (packed vs padded rows): error <= n * eps *
    sum|x| / n = 1.2e-7 * 48 * 7 ~ 4e-5 per mean; the log odds differ by the difference of two
    such means (log1mexp of a mean near -7 is ~1e-3 and moves less), so <= 1e-4; the logsigmoid
    has slope < 1. Observed in a full run: 1.2e-7."""
    from rlhfkit.data import write_jsonl

    args = argparse.Namespace(steps=2, batch=4, max_length=128, lr=1e-4, orpo_lambda=0.1)
    words = bench.build_model(tmp_path / "model")
    pairs = bench.make_pairs(words, args.steps * args.batch)
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    order = bench.batch_order(len(pairs), args.steps, args.batch, seed=0)
    _, ours = bench.run_rlhfkit(str(tmp_path / "model"), data, args)
    _, trl = bench.run_trl(str(tmp_path / "model"), [pairs[i] for i in order], args)
    bench.check_same_tokens(str(tmp_path / "model"), data, trl.token_ids, order, args.max_length)
    assert len(ours.losses) == len(trl.losses) == args.steps
    for name in ("or_logsigmoid", "log_odds"):
        assert ours.first[name] == pytest.approx(trl.first[name], abs=1e-4), name
    # the totals differ by design (TRL's NLL also averages over the prompt tokens)
    assert ours.losses[0] != pytest.approx(trl.losses[0], abs=1e-6)
