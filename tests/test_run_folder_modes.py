"""Every file of a run folder follows the umask. safetensors creates its files 0600, so before the
fix final/model.safetensors, checkpoint tensors and DPO's reference cache were private while
everything else was group/world readable."""

from __future__ import annotations

import os
import stat

import pytest
from conftest import build_tiny_model, random_demos, write_jsonl

from rlhfkit.cli import main


@pytest.fixture
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _modes(folder):
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("umask", [0o022, 0o002], indirect=True)
@pytest.mark.parametrize("verb", ["sft", "dpo"])
def test_every_file_of_a_run_follows_the_umask(tmp_path, umask, verb):
    model = build_tiny_model(tmp_path / "model")
    demos = random_demos(16, 0)
    if verb == "sft":
        data = write_jsonl(tmp_path / "d.jsonl", demos)
        extra = ["data.eval=null"]
    else:
        data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": d["prompt"], "chosen": d["response"], "rejected": e["response"]}
                                                  for d, e in zip(demos, demos[1:] + demos[:1], strict=True)])
        extra = ["sampling.prompts=null", "sampling.text=null"]  # the reference cache is still written
    out = tmp_path / "run"
    sets = [f"model.name_or_path={model}", f"data.train={data}", "train.batch_size=4", "train.micro_batch_size=4",
            "train.max_steps=2", "log.save_every=1", "log.progress=false", *extra]
    assert main([verb, "--out", str(out), *[x for s in sets for x in ("--set", s)]]) == 0
    modes = _modes(out)
    assert "final/model.safetensors" in modes and "checkpoints/step-1/optimizer.safetensors" in modes
    assert verb == "sft" or "ref_logps.safetensors" in modes
    expected = 0o666 & ~umask  # a file created with open(): 0644 under 022, 0664 under 002
    assert {name: oct(m) for name, m in modes.items() if m != expected} == {}
