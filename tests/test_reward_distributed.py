"""Reward training on 2 processes (gloo, CPU) matches 1 process with the same global batch of prompts:
the K-wise loss is normalised by the global prompt count, and the scalar head (applied outside the
HF forward, to the pooled hidden state) is synchronised by DDP like every other parameter."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny_model, torchrun, write_jsonl
from test_reward_recipe import comparisons
from transformers import AutoModelForSequenceClassification


def _launch(nproc: int, model, train, held, out) -> list[dict]:
    args = [f"model.name_or_path={model}", f"data.train={train}", f"data.eval={held}", "train.batch_size=8",
            "train.micro_batch_size=2", "train.lr=3e-3", "train.max_steps=4", "log.progress=false", "log.save_every=0",
            "log.eval_every=2", "normalize.source=eval_data"]
    return torchrun("reward", nproc, out, args)


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    model = build_tiny_model(tmp_path / "m")
    train = write_jsonl(tmp_path / "train.jsonl", comparisons(48, 3, 0))
    held = write_jsonl(tmp_path / "held.jsonl", comparisons(16, 3, 1))
    one = _launch(1, model, train, held, tmp_path / "one")
    two = _launch(2, model, train, held, tmp_path / "two")
    assert len(one) == len(two) == 4
    for a, b in zip(one, two, strict=True):
        assert a["loss/reward"] == pytest.approx(b["loss/reward"], rel=1e-4)
        assert a["train/pairs"] == b["train/pairs"] == 8 * 3
        if "eval/accuracy" in a:
            assert a["eval/accuracy"] == b["eval/accuracy"]
    wa = AutoModelForSequenceClassification.from_pretrained(tmp_path / "one" / "final").state_dict()
    wb = AutoModelForSequenceClassification.from_pretrained(tmp_path / "two" / "final").state_dict()
    for k in wa:
        if k == "transformer.ln_f.bias":
            # r = w·(γ⊙x̂ + β): β adds w·β to every reward, which cancels in r_w − r_l, so its true
            # gradient is exactly 0 and Adam turns float noise into ±lr steps. Not compared.
            continue
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
    # The raw offsets differ by that β noise; the normalised rewards (offset removed) agree.
    from rlhfkit.models.reward import load_reward_model

    rows = [json.loads(x) for x in held.read_text().splitlines()]
    prompts, responses = [r["prompt"] for r in rows for _ in r["responses"]], [x for r in rows for x in r["responses"]]
    ra = load_reward_model(tmp_path / "one" / "final").score(prompts, responses).rewards
    rb = load_reward_model(tmp_path / "two" / "final").score(prompts, responses).rewards
    torch.testing.assert_close(ra, rb, rtol=1e-3, atol=1e-3)
