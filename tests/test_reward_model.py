"""Reward model: scalar head, last-real-token pooling, HF round trip, scoring API, ensembles."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import build_tiny_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlhfkit.config import ModelConfig
from rlhfkit.models.ensemble import aggregate_members, write_ensemble
from rlhfkit.models.reward import (
    build_reward_model,
    collate_rows,
    encode_scored,
    forward_rewards,
    last_token_index,
    load_reward_model,
    reward_head,
    write_normalization,
)

PROMPTS = ["the movie", "i liked the plot", "the acting was"]
RESPONSES = ["was great .", "and the ending was very fun !", "dull ."]


@pytest.fixture
def rm_dir(tmp_path):
    """A freshly built (untrained) tiny GPT-2 RM saved as an HF folder with normalisation."""
    base = build_tiny_model(tmp_path / "base")
    tok = AutoTokenizer.from_pretrained(base)
    model = build_reward_model(ModelConfig(name_or_path=str(base)), tok.pad_token_id, seed=3)
    out = tmp_path / "rm"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    write_normalization(out, shift=0.25, scale=2.0, max_length=64)
    return out


def test_last_token_index_for_left_and_right_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 4]


def test_head_is_initialised_with_small_std(tmp_path):
    """std ≈ 1/sqrt(d + 1) = 1/sqrt(33) ≈ 0.174 for d = 32; seeded, so members differ by seed."""
    base = build_tiny_model(tmp_path / "base")
    a = build_reward_model(ModelConfig(name_or_path=str(base)), 0, seed=0)
    b = build_reward_model(ModelConfig(name_or_path=str(base)), 0, seed=1)
    w = reward_head(a).weight
    assert w.shape == (1, 32)
    assert 0.08 < w.std().item() < 0.3 and abs(w.std().item() - 1 / math.sqrt(33)) < 0.1
    assert not torch.equal(w, reward_head(b).weight)
    assert a.config.num_labels == 1 and a.config.pad_token_id == 0


def test_our_pooling_matches_plain_hf_forward_when_pad_is_not_eos(rm_dir):
    """The saved folder is a plain HF classifier; with pad != EOS HF's pad-id pooling and our
    mask pooling read the same (last) token, so the raw scores agree."""
    hf = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    tok = AutoTokenizer.from_pretrained(rm_dir)
    assert tok.pad_token_id != tok.eos_token_id
    rows = [encode_scored(tok, p, r, 64) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    assert all(row[-1] == tok.eos_token_id for row in rows)  # scored at the response's EOS
    ids, mask = collate_rows(rows, tok.pad_token_id)
    with torch.no_grad():
        ours = forward_rewards(hf, ids, mask)
        theirs = hf(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
        single = torch.stack([hf(input_ids=torch.tensor([r])).logits.squeeze() for r in rows])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours, single, atol=1e-5, rtol=1e-5)  # padding does not change a score


def test_left_padded_rollouts_score_like_right_padded_rows(rm_dir):
    rm = load_reward_model(rm_dir)
    rows = rm.encode(PROMPTS, RESPONSES)
    right_ids, right_mask = collate_rows(rows, rm.tokenizer.pad_token_id)
    from rlhfkit.data import pad_batch
    from rlhfkit.data.tokenize import attention_mask

    left_ids, left_mask = pad_batch(rows, rm.tokenizer.pad_token_id, "left"), attention_mask(rows, "left")
    torch.testing.assert_close(rm.score_ids(left_ids, left_mask), rm.score_ids(right_ids, right_mask), atol=1e-5, rtol=1e-5)


def test_pad_equal_to_eos_is_still_scored_at_the_eos(rm_dir):
    """With pad == EOS, HF's pooling skips the final EOS; ours still reads it (the mask knows)."""
    hf = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    tok = AutoTokenizer.from_pretrained(rm_dir)
    rows = [encode_scored(tok, p, r, 64) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    ids, mask = collate_rows(rows, tok.eos_token_id)
    with torch.no_grad():
        ours = forward_rewards(hf, ids, mask)
        single = torch.stack([hf(input_ids=torch.tensor([r])).logits.squeeze() for r in rows])
        hf.config.pad_token_id = tok.eos_token_id
        naive = hf(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    torch.testing.assert_close(ours, single, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(naive, single, atol=1e-4)


def test_score_applies_the_stored_normalisation_and_keeps_order(rm_dir):
    raw = load_reward_model(rm_dir, normalize=False).score(PROMPTS, RESPONSES, batch_size=2)
    norm = load_reward_model(rm_dir).score(PROMPTS, RESPONSES, batch_size=2)
    torch.testing.assert_close(norm.rewards, (raw.rewards - 0.25) / 2.0)
    assert norm.members.shape == (1, 3) and norm.std.tolist() == [0.0, 0.0, 0.0]
    # One at a time gives the same numbers (length-sorted batching keeps the order).
    one = [load_reward_model(rm_dir).score([p], [r]).rewards.item() for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    assert norm.rewards.tolist() == pytest.approx(one, abs=1e-5)


@pytest.mark.parametrize("how", ["mean", "min", "uwo"])
def test_ensemble_of_one_equals_the_single_model_exactly(rm_dir, tmp_path, how):
    ens = write_ensemble(tmp_path / "ens", [rm_dir], AutoTokenizer.from_pretrained(rm_dir), {"seeds": [3]})
    single = load_reward_model(rm_dir).score(PROMPTS, RESPONSES)
    e = load_reward_model(ens, aggregation=how, uwo_lambda=2.0).score(PROMPTS, RESPONSES)
    assert torch.equal(e.rewards, single.rewards)
    assert torch.equal(e.members, single.members)
    assert torch.equal(e.std, torch.zeros(3))


def test_aggregations_by_hand():
    """R = [[1, 2], [3, −2]] (2 members, 2 rows): mean [2, 0]; min [1, −2];
    population var [1, 4], so uwo with λ = 0.5 is [2 − 0.5, 0 − 2] = [1.5, −2]."""
    r = torch.tensor([[1.0, 2.0], [3.0, -2.0]])
    assert aggregate_members(r, "mean").tolist() == [2.0, 0.0]
    assert aggregate_members(r, "min").tolist() == [1.0, -2.0]
    assert aggregate_members(r, "uwo", 0.5).tolist() == [1.5, -2.0]
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate_members(r, "max")


def test_two_member_ensemble_reports_members_std_and_aggregate(rm_dir, tmp_path):
    other = tmp_path / "rm2"
    tok = AutoTokenizer.from_pretrained(rm_dir)
    m2 = AutoModelForSequenceClassification.from_pretrained(rm_dir)
    with torch.no_grad():
        reward_head(m2).weight.mul_(-1.0)  # a member that disagrees
    m2.save_pretrained(other)
    tok.save_pretrained(other)
    write_normalization(other, shift=0.0, scale=1.0, max_length=64)
    ens = write_ensemble(tmp_path / "ens", [rm_dir, other], tok)
    a = load_reward_model(rm_dir).score(PROMPTS, RESPONSES).rewards
    b = load_reward_model(other).score(PROMPTS, RESPONSES).rewards
    s = load_reward_model(ens, aggregation="min").score(PROMPTS, RESPONSES)
    torch.testing.assert_close(s.members, torch.stack([a, b]))
    torch.testing.assert_close(s.rewards, torch.minimum(a, b))
    torch.testing.assert_close(s.std, (a - b).abs() / 2)


def test_encode_scored_empty_response_and_truncation(rm_dir):
    """An empty response is just EOS (still scoreable); over max_length the prompt loses tokens from
    the left first (keeping >= 8), so the response and its EOS survive."""
    tok = AutoTokenizer.from_pretrained(rm_dir)
    assert encode_scored(tok, "the movie", "", 64) == tok("the movie")["input_ids"] + [tok.eos_token_id]
    long_prompt = " ".join(["the movie was"] * 10)  # 30 tokens
    ids = encode_scored(tok, long_prompt, "great fun .", 16)
    assert len(ids) == 16 and ids[-4:] == tok(" great fun .", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = encode_scored(tok, long_prompt, " ".join(["good"] * 20), 16)  # response too long: keep 8 prompt tokens
    assert len(ids) == 16 and ids[:8] == tok(long_prompt)["input_ids"][-8:] and ids[-1] != tok.eos_token_id
