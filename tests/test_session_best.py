"""TrainSession's keep-best snapshot: save_best / restore_best, and its fate on resume."""

from __future__ import annotations

import json

import torch
from conftest import build_tiny_model
from transformers import AutoModelForCausalLM

from rlhfkit.config import ModelConfig
from rlhfkit.models.loading import load_tokenizer
from rlhfkit.recipes.sft import SFTConfig
from rlhfkit.train.session import TrainSession


def _session(tmp_path, resume=False):
    return TrainSession(SFTConfig(), tmp_path / "run", stage="sft", resume=resume)


def test_restore_best_brings_back_the_snapshot_weights(tmp_path):
    folder = build_tiny_model(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = load_tokenizer(ModelConfig(name_or_path=str(folder)))
    s = _session(tmp_path)
    assert s.restore_best(model) is None  # nothing saved yet
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    s.save_best(3, model, tok, "gold/mean", 0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # training went on and got worse
    info = s.restore_best(model)
    assert info == {"step": 3, "metric": "gold/mean", "value": 0.5}
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshot[k]), k
    # best/ is a plain HF folder too
    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "best")


def test_best_from_after_the_resumed_step_is_dropped(tmp_path):
    folder = build_tiny_model(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(folder)
    s = _session(tmp_path)
    s.save_best(7, model, None, "gold/mean", 0.9)
    s.save(5, {"policy": model})  # the newest checkpoint is older than the snapshot
    resumed = _session(tmp_path, resume=True)
    step, _ = resumed.resume({"policy": model})
    assert step == 5
    assert not (tmp_path / "run" / "best").exists()


def test_best_from_before_the_resumed_step_is_kept(tmp_path):
    folder = build_tiny_model(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(folder)
    s = _session(tmp_path)
    s.save_best(4, model, None, "gold/mean", 0.9)
    s.save(5, {"policy": model})
    _session(tmp_path, resume=True).resume({"policy": model})
    assert json.loads((tmp_path / "run" / "best" / "best.json").read_text())["step"] == 4
