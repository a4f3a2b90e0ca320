"""Best-of-n: the analytic KL, the disjoint-group estimator, and the CLI on a tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlhfkit.cli import main
from rlhfkit.data import read_records
from rlhfkit.jobs.best_of_n import best_in_groups, best_of_n_kl, summarize


def length_reward(prompts, responses):
    """A reward a tiny random model's samples vary in: the response's word count."""
    return [float(len(r.split())) for r in responses]


def test_analytic_kl_by_hand():
    """log n - (n-1)/n: n=1 -> 0; n=2 -> ln 2 - 1/2 = 0.193147; n=4 -> ln 4 - 3/4 = 0.636294;
    n=64 -> ln 64 - 63/64 = 4.158883 - 0.984375 = 3.174508."""
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(0.193147, abs=1e-6)
    assert best_of_n_kl(4) == pytest.approx(0.636294, abs=1e-6)
    assert best_of_n_kl(64) == pytest.approx(3.174508, abs=1e-6)
    with pytest.raises(ValueError):
        best_of_n_kl(0)


@pytest.mark.parametrize("n", [2, 4, 16])
def test_analytic_kl_matches_the_exact_kl_of_best_of_n_over_many_untied_outcomes(n):
    """Base policy uniform over M outcomes with distinct rewards (outcome i has rank i). Best-of-n
    picks outcome i with prob (i/M)^n - ((i-1)/M)^n, so KL = sum_i q_i log(q_i M); as M grows
    this tends to log n - (n-1)/n (Stiennon et al. 2020, App. G.3)."""
    m = 100_000
    i = torch.arange(1, m + 1, dtype=torch.float64)
    q = (i / m) ** n - ((i - 1) / m) ** n
    exact = float((q * torch.log(q * m)).sum())
    assert exact == pytest.approx(best_of_n_kl(n), abs=2e-3)


def test_best_in_groups_by_hand():
    """Rewards of 4 samples [1, 3, 2, 0]: best-of-2 groups {1, 3} and {2, 0} keep samples 1 and 2;
    their values [10, 30, 20, 0] average to 25; best-of-4 keeps sample 1 (value 30); best-of-1 is
    the plain mean 15."""
    rewards = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    values = torch.tensor([[10.0, 30.0, 20.0, 0.0]])
    assert best_in_groups(rewards, 2, values).tolist() == [25.0]
    assert best_in_groups(rewards, 4, values).tolist() == [30.0]
    assert best_in_groups(rewards, 1, values).tolist() == [15.0]
    assert best_in_groups(rewards, 2).tolist() == [2.5]
    with pytest.raises(ValueError):
        best_in_groups(rewards, 5)


def test_summarize_by_hand():
    rows = [{"reward": 3.0, "rewards": [3.0, 1.0], "finished": True}, {"reward": 1.0, "rewards": [1.0, 1.0], "finished": False}]
    m = summarize(rows, 2)
    assert m["reward/mean"] == 2.0 and m["reward/mean_single"] == 1.5 and m["response/eos_rate"] == 0.5
    assert m["kl/analytic"] == pytest.approx(math.log(2) - 0.5)


def test_cli_keeps_the_best_and_writes_demonstrations(tmp_path, tiny_model):
    from conftest import write_jsonl

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in ("the movie", "i liked", "the plot was", "a film")])
    out = tmp_path / "bon.jsonl"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(["best-of-n", "--model", str(tiny_model), "--prompts", str(prompts), "--n", "8",
                   "--reward", "test_best_of_n:length_reward", "--max-new-tokens", "12", "--out", str(out)])
    finally:
        torch.set_num_threads(before)
    assert rc == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 4 and all(r["reward"] == float(len(r["response"].split())) for r in rows)
    demos = read_records(out, "demonstration")  # usable as SFT data as written
    assert [d.prompt for d in demos] == ["the movie", "i liked", "the plot was", "a film"]
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["reward/mean"] > summary["reward/mean_single"]  # the kept sample beats a random one
    assert summary["kl/analytic"] == pytest.approx(best_of_n_kl(8))
