"""2 processes (gloo, CPU) give the same losses and weights as 1 process with the same global batch."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_model, torchrun
from transformers import AutoModelForCausalLM


def _launch(nproc: int, model, train, eval_, out) -> list[dict]:
    args = [f"model.name_or_path={model}", f"data.train={train}", f"data.eval={eval_}", "train.batch_size=8",
            "train.micro_batch_size=2", "train.lr=1e-2", "train.max_steps=4", "log.progress=false", "log.save_every=0",
            "log.eval_every=2"]
    return torchrun("sft", nproc, out, args)


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, demos):
    model = build_tiny_model(tmp_path / "m")
    one = _launch(1, model, *demos, tmp_path / "one")
    two = _launch(2, model, *demos, tmp_path / "two")
    assert len(one) == len(two) == 4
    for a, b in zip(one, two, strict=True):
        assert a["loss/sft"] == pytest.approx(b["loss/sft"], rel=1e-4)
        assert a["train/tokens"] == b["train/tokens"]
        if "eval/perplexity" in a:
            assert a["eval/perplexity"] == pytest.approx(b["eval/perplexity"], rel=1e-4)
    wa = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "final").state_dict()
    wb = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "final").state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
