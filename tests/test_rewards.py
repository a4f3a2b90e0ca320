"""Reward sources behind one interface: callables, the lab gold judge, RM folders and ensembles."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_model

from rlhfkit.rewards import CallableReward, GoldReward, ModelReward, RewardOutput, build_reward


def word_count(prompts, responses):
    return [len(r.split()) for r in responses]


def with_extras(prompts, responses):
    return RewardOutput(torch.ones(len(responses)), {"reward/custom": 3.0})


def wrong_length(prompts, responses):
    return [1.0]


def test_callable_source_by_spec():
    src = build_reward(f"{__name__}:word_count")
    assert isinstance(src, CallableReward)
    out = src(["p", "q"], ["a b c", ""])
    assert out.rewards.tolist() == [3.0, 0.0] and out.rewards.dtype == torch.float32
    out = build_reward(f"{__name__}:with_extras")(["p"], ["a"])
    assert out.extras == {"reward/custom": 3.0}
    with pytest.raises(ValueError, match="returned 1 rewards for 2"):
        build_reward(f"{__name__}:wrong_length")(["p", "q"], ["a", "b"])
    with pytest.raises(ValueError, match="cannot import"):
        build_reward(f"{__name__}:no_such_function")


def test_bad_spec_is_explained():
    with pytest.raises(ValueError, match="neither 'lab:gold'"):
        build_reward("/no/such/folder")


def test_gold_source_scores_prompt_plus_response():
    from rlhfkit.lab import gold_score

    src = build_reward("lab:gold")
    assert isinstance(src, GoldReward)
    prompts, responses = ["The film was", "The film was"], [" great.", " great great great!!!!"]
    out = src(prompts, responses)
    assert out.rewards.tolist() == pytest.approx(gold_score([p + r for p, r in zip(prompts, responses, strict=True)]))
    assert out.rewards[0] > out.rewards[1]  # repetition and shouting cost gold


def _rm_folder(tmp_path, name, seed):
    from transformers import AutoTokenizer

    from rlhfkit.config import ModelConfig
    from rlhfkit.models.reward import build_reward_model, write_normalization

    base = tmp_path / "base"
    if not base.exists():
        build_tiny_model(base)
    tok = AutoTokenizer.from_pretrained(base)
    rm = build_reward_model(ModelConfig(name_or_path=str(base)), tok.pad_token_id, seed=seed)
    rm.save_pretrained(tmp_path / name)
    tok.save_pretrained(tmp_path / name)
    write_normalization(tmp_path / name, shift=0.0, scale=1.0, max_length=64)
    return tmp_path / name


def test_reward_model_folder_and_ensemble(tmp_path):
    """A single RM folder scores like `load_reward_model(...).score`; an ensemble of two adds
    reward/ensemble_std and aggregates: min <= mean, and uwo = mean - var."""
    from rlhfkit.models.ensemble import write_ensemble
    from rlhfkit.models.reward import load_reward_model

    one = _rm_folder(tmp_path, "rm0", 0)
    two = _rm_folder(tmp_path, "rm1", 1)
    prompts, responses = ["the movie", "a film", "it was"], ["was great .", "bad", "fun and long ."]
    src = build_reward(str(one))
    assert isinstance(src, ModelReward)
    out = src(prompts, responses)
    expected = load_reward_model(one).score(prompts, responses).rewards
    torch.testing.assert_close(out.rewards, expected.float())
    assert out.extras == {}

    from transformers import AutoTokenizer

    ens = write_ensemble(tmp_path / "ens", [one, two], AutoTokenizer.from_pretrained(one))
    mean = build_reward(str(ens), "mean")(prompts, responses)
    low = build_reward(str(ens), "min")(prompts, responses)
    uwo = build_reward(str(ens), "uwo", uwo_lambda=1.0)(prompts, responses)
    assert mean.extras["reward/ensemble_std"] > 0
    assert (low.rewards <= mean.rewards + 1e-6).all()
    a, b = src(prompts, responses).rewards, build_reward(str(two))(prompts, responses).rewards
    torch.testing.assert_close(mean.rewards, (a + b) / 2)
    torch.testing.assert_close(uwo.rewards, (a + b) / 2 - ((a - b) / 2) ** 2)  # population var of 2 = (diff/2)^2
