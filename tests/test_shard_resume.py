"""Sharded runs (2 gloo processes, train.sharding=fsdp) resume exactly, and their final/ is the
merged full model gathered from the shards.

Resume: run A trains 4 steps, checkpointing (sharded, torch.distributed.checkpoint) at step 2. Run
B is A's folder as it was when the step-2 checkpoint was written (final/ and later rows removed:
a kill right after that checkpoint), continued with --resume: its processes know only what the
checkpoint holds (shards of weights and AdamW state, scheduler, per-process RNG, step). Same
process count, same operations in the same order: B's final weights must equal A's bit for bit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model, random_demos, torchrun, write_jsonl
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rlhfkit.train.shard import SHARDED_DIR

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_lora_sft_resumes_exactly_and_final_is_merged(tmp_path):
    model = build_tiny_model(tmp_path / "m")
    train = write_jsonl(tmp_path / "train.jsonl", random_demos(48, 0))
    args = [f"model.name_or_path={model}", f"data.train={train}", "data.eval=null", "train.batch_size=8",
            "train.micro_batch_size=2", "train.lr=3e-2", "train.max_steps=4", "train.sharding=fsdp",
            "model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8", "log.progress=false",
            "log.save_every=2", "log.keep_checkpoints=0"]
    a = torchrun("sft", 2, tmp_path / "a", args)
    assert (tmp_path / "a" / "checkpoints" / "step-2" / SHARDED_DIR).is_dir()

    b_dir = tmp_path / "b"
    shutil.copytree(tmp_path / "a", b_dir)
    shutil.rmtree(b_dir / "final")
    b = torchrun("sft", 2, b_dir, args, "--resume")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["loss/sft"] for r in b] == [r["loss/sft"] for r in a]
    wa, wb = (load_file(str(d / "final" / "model.safetensors")) for d in (tmp_path / "a", b_dir))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k

    # final/ is the merged model, plain transformers; final/adapter/ merged onto the base by peft
    # gives the same weights (same merge, float32 rounding of W + (alpha/r) B A: default tolerances)
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "final").state_dict()
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model),
                                       tmp_path / "a" / "final" / "adapter").merge_and_unload().state_dict()
    base = AutoModelForCausalLM.from_pretrained(model).state_dict()
    for k in final:
        torch.testing.assert_close(final[k], merged[k], msg=k)
    assert not torch.equal(final["transformer.h.0.attn.c_attn.weight"], base["transformer.h.0.attn.c_attn.weight"])


@pytest.mark.slow
def test_the_shipped_fsdp_accelerate_config_shards(tmp_path):
    """`accelerate launch --config_file configs/accelerate/fsdp.yaml` is the same switch as
    train.sharding=fsdp (on CPU too: 2 gloo processes): its checkpoints are sharded, its final/ a
    plain HF folder, and accelerate's own FSDP path (which would fail on CPU or turn into DDP) is off."""
    from conftest import free_port

    model = build_tiny_model(tmp_path / "m")
    train = write_jsonl(tmp_path / "train.jsonl", random_demos(16, 0))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs/accelerate/fsdp.yaml"),
           "--main_process_port", str(free_port()), "-m", "rlhfkit.cli", "sft", "--out", str(tmp_path / "run")]
    for a in (f"model.name_or_path={model}", f"data.train={train}", "data.eval=null", "train.batch_size=8",
              "train.micro_batch_size=2", "train.max_steps=2", "log.save_every=1", "log.progress=false"):
        cmd += ["--set", a]
    res = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", "RLHFKIT_PROGRESS": "0"}, capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = tmp_path / "run" / "checkpoints" / "step-1"
    assert (ckpt / SHARDED_DIR).is_dir() and (ckpt / "rng-1.json").exists()  # two processes, sharded
    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
