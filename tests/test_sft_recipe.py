"""SFT recipe: architectures, run folder, resume parity, bad input stops before training."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny_model, crash_at_save, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhfkit.config import load_config
from rlhfkit.data import DataError
from rlhfkit.recipes import sft


def _cfg(model, train, eval_, *extra):
    return load_config(
        sft.SFTConfig,
        None,
        [f"model.name_or_path={model}", f"data.train={train}", f"data.eval={eval_}", "train.batch_size=8",
         "train.micro_batch_size=4", "train.lr=1e-2", "train.max_steps=6", "log.save_every=3", "log.eval_every=3",
         "log.progress=false", *extra],
    )


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
def test_sft_lowers_loss_and_final_loads_in_plain_transformers(tmp_path, demos, arch):
    model_dir = build_tiny_model(tmp_path / arch, arch)
    out = sft.run(_cfg(model_dir, *demos, "train.max_steps=12"), tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert rows[-1]["loss/sft"] < rows[0]["loss/sft"] * 0.9
    assert "eval/perplexity" in rows[2]
    assert (tmp_path / "run" / "config.yaml").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == arch and tok.eos_token == "<eos>"
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, demos):
    model_dir = build_tiny_model(tmp_path / "m")
    full = sft.run(_cfg(model_dir, *demos), tmp_path / "full")
    # "Interrupted" run: stop after step 3 (its checkpoint), then resume to step 6.
    cut_cfg = _cfg(model_dir, *demos)
    _run_until(cut_cfg, tmp_path / "cut", stop_after=3)
    assert (tmp_path / "cut" / "checkpoints" / "step-3").is_dir()
    resumed = sft.run(cut_cfg, tmp_path / "cut", resume=True)
    a = AutoModelForCausalLM.from_pretrained(full).state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    steps = [json.loads(x)["step"] for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # no duplicated or missing log lines after resume


def _run_until(cfg, out, stop_after: int) -> None:
    """Run SFT but crash right after the checkpoint at `stop_after` is written."""
    with crash_at_save(stop_after):
        sft.run(cfg, out)


def test_bad_record_stops_before_training(tmp_path, demos, tiny_model):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "the movie", "response": "great ."}, {"prompt": "x"}])
    with pytest.raises(DataError, match=r"bad.jsonl:2.*response"):
        sft.run(_cfg(tiny_model, bad, demos[1]), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
