"""Rewards in the online loop (`rlhfkit grpo`): a `module:function` or `file.py:function` reward gets
the prompt records' other fields by name, several weighted sources are summed with each one's mean
logged (and plotted in the report), and a reward function that raises, returns a NaN or the wrong
number of values stops the run with one line naming the function and the batch (exit 2)."""

from __future__ import annotations

import json
import math

import pytest
from conftest import build_tiny_model, random_demos, write_jsonl
from test_cli_errors import one_line_error, sets

from rlhfkit.cli import main


def answer_matches(prompts, responses, answer):
    """1 where the `answer` column is the one its prompt was written with (prompt.upper())."""
    return [float(a == p.upper()) for p, a in zip(prompts, answer, strict=True)]


def raises(prompts, responses):
    raise ValueError("scorer crashed")


def nan_for_the_third(prompts, responses):
    return [math.nan if i == 2 else 0.0 for i in range(len(responses))]


def one_value(prompts, responses):
    return [1.0]


FILE_REWARD = '''
def chars(prompts, responses, answer):
    assert all(a == p.upper() for p, a in zip(prompts, answer)), "columns misaligned"
    return [float(len(r)) for r in responses]
'''


@pytest.fixture
def world(tmp_path) -> dict:
    """A tiny model; 32 distinct prompts, each with an `answer` column derived from its text."""
    demos = list({d["prompt"]: d for d in random_demos(64, 0)}.values())[:32]
    assert len(demos) == 32
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": d["prompt"], "answer": d["prompt"].upper()} for d in demos])
    (tmp_path / "scores.py").write_text(FILE_REWARD)
    return {"model": build_tiny_model(tmp_path / "m"), "prompts": prompts, "file": tmp_path / "scores.py"}


def _args(world, *extra) -> list[str]:
    return sets(f"model.name_or_path={world['model']}", f"data.prompts={world['prompts']}", "eval.text=null",
                "eval.gold=none", "log.progress=false", "log.save_every=0", "train.batch_size=16",
                "train.micro_batch_size=8", "rollout.group_size=4", "rollout.max_new_tokens=6", "train.max_steps=2",
                *extra)


def test_columns_by_name_and_weighted_sources_each_logged(tmp_path, world):
    """reward = 2 * answer_matches (module) + 0.5 * chars (file): both functions see each response's
    own `answer` (answer_matches is 1 only when it is aligned; chars asserts it), each source's batch
    mean is logged as reward/<function>/mean, and reward/mean is their weighted sum (exact in float32:
    integers and halves); the report draws the per-source curves."""
    out = tmp_path / "run"
    spec = f"[{__name__}:answer_matches, {world['file']}:chars]"
    assert main(["grpo", "--out", str(out), *_args(world, f"reward.source={spec}", "reward.weights=[2, 0.5]")]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().split("\n") if x]
    assert len(rows) == 2
    for r in rows:
        assert r["reward/answer_matches/mean"] == 1.0
        assert r["reward/chars/mean"] > 0
        assert r["reward/mean"] == pytest.approx(2 * 1.0 + 0.5 * r["reward/chars/mean"], rel=1e-6)


def test_report_plots_each_reward_sources_mean():
    """A stage whose only curves are reward/<name>/mean still gets its panel (without the panel
    there would be nothing to draw: None)."""
    from rlhfkit.monitor.plots import stage_curves

    rows = [{"step": s, "reward/gold/mean": 0.1 * s, "reward/format/mean": 1.0 - 0.1 * s} for s in range(1, 5)]
    png = stage_curves(rows)
    assert png is not None and png.startswith(b"\x89PNG")


@pytest.mark.parametrize("fn, words", [
    ("raises", "raised ValueError: scorer crashed"),
    ("nan_for_the_third", "non-finite rewards (at responses [2])"),
    ("one_value", "returned 1 rewards for 16 responses"),
])
def test_a_failing_reward_function_stops_the_run_with_one_line(tmp_path, capsys, world, fn, words):
    """Through `rlhfkit.cli.main`: exit 2, no traceback, one line naming the function, what went
    wrong and the batch (step 1, the global batch's 16 responses). In a weighted list the failing
    member is the one named."""
    spec = f"{__name__}:{fn}"
    line = one_line_error(capsys, "grpo", "--out", tmp_path / "run", *_args(world, f"reward.source={spec}"))
    assert repr(spec) in line and words in line and "step 1, responses 0..15" in line, line
    both = f"[{world['file']}:chars, {spec}]"
    line = one_line_error(capsys, "grpo", "--out", tmp_path / "run2", *_args(world, f"reward.source={both}"))
    assert repr(spec) in line and words in line, line


def test_a_missing_column_is_named(tmp_path, capsys, world):
    """A function that takes a column the prompt records lack: one line naming it and the field."""
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": d["prompt"]} for d in random_demos(16, 0)])
    line = one_line_error(capsys, "grpo", "--out", tmp_path / "run", *_args(
        {**world, "prompts": plain}, f"reward.source={__name__}:answer_matches"))
    assert "'answer'" in line and "answer_matches" in line, line
