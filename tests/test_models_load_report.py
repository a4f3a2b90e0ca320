"""transformers' LOAD REPORT when a reward model or critic is made from a causal LM: the new scalar
head it lists as MISSING is expected (one line of ours instead); anything else is still reported."""

from __future__ import annotations

import logging

import pytest
from conftest import build_tiny_model
from safetensors.torch import load_file, save_file

from rlhfkit.config import ModelConfig
from rlhfkit.models.reward import build_reward_model
from rlhfkit.models.value import load_value_model


@pytest.fixture
def hf_log():
    """Every record that reaches transformers' library logger (it does not propagate to root, so
    caplog would not see it)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(logging.WARNING)
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def _reports(records) -> list[str]:
    return [r.getMessage() for r in records if "LOAD REPORT" in r.getMessage()]


def test_new_reward_head_is_one_line_of_ours_not_a_load_report(tiny_model, hf_log, capsys):
    capsys.readouterr()
    build_reward_model(ModelConfig(name_or_path=str(tiny_model)), 0)
    assert _reports(hf_log) == []
    out = capsys.readouterr().out
    assert f"[reward] new scalar head on {tiny_model} (initialised)" in out


def test_new_value_head_is_one_line_and_a_kept_rm_head_says_nothing(tiny_model, tmp_path, hf_log, capsys):
    capsys.readouterr()
    cfg = ModelConfig(name_or_path=str(tiny_model))
    load_value_model("policy", cfg)
    assert _reports(hf_log) == []
    assert f"[ppo] new value head on {tiny_model} (zero-initialised)" in capsys.readouterr().out
    rm = tmp_path / "rm"
    build_reward_model(cfg, 0).save_pretrained(rm)
    capsys.readouterr()
    load_value_model(str(rm), cfg)  # an RM folder: its head is loaded, nothing is new
    assert _reports(hf_log) == [] and "new" not in capsys.readouterr().out


def test_other_missing_keys_keep_the_full_report(tmp_path, hf_log):
    """A backbone checkpoint that lacks one of its own weights: transformers' report appears, and
    lists that key (as well as the head)."""
    folder = build_tiny_model(tmp_path / "m")
    weights = load_file(str(folder / "model.safetensors"))
    del weights["transformer.h.0.mlp.c_fc.bias"]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    build_reward_model(ModelConfig(name_or_path=str(folder)), 0)
    (report,) = _reports(hf_log)
    assert "h.0.mlp.c_fc.bias" in report and "score.weight" in report
