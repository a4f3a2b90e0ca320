"""`rlhfkit cai` under 2 processes (torchrun, gloo, CPU) writes steps.jsonl and sl_cai.jsonl byte for
byte as 1 process does: each process revises whole chunks with their positional seeds (initial
response, principle draws, critiques, revisions), the main process writes both files in prompt
order; an interrupted 2-process run resumes to the same files."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import build_tiny_model, torchrun, write_jsonl
from test_cai_recipe import SMALL

from rlhfkit.config import load_config
from rlhfkit.jobs import cai


@pytest.mark.slow
def test_two_processes_write_the_same_steps_and_demonstrations_as_one(tmp_path):
    model = build_tiny_model(tmp_path / "m")
    constitution = tmp_path / "small.yaml"
    constitution.write_text(yaml.safe_dump({**SMALL, "critique": {**SMALL["critique"], "stop": "."},
                                            "revision": {**SMALL["revision"], "stop": "."}}))
    words = ["was", "is", "plot", "cast", "music"]
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"the movie {w}"} for w in words])
    # 5 prompts in chunks of 2: 3 chunks, so the second wave has one chunk for two processes
    args = [f"model.name_or_path={model}", f"prompts={prompts}", f"constitution={constitution}", "batch_size=2",
            "sampling.max_new_tokens=6", "rounds=2"]
    cai.run(load_config(cai.CAIConfig, None, args), tmp_path / "one")  # 1 process: this one
    torchrun("cai", 2, tmp_path / "two", args)
    steps = (tmp_path / "one" / cai.STEPS_FILE).read_text()
    demos = (tmp_path / "one" / cai.DEMOS_FILE).read_text()
    rows = [json.loads(x) for x in steps.splitlines()]
    assert [r["prompt"] for r in rows] == [f"the movie {w}" for w in words]
    assert all(len(r["rounds"]) == 2 for r in rows) and demos
    assert (tmp_path / "two" / cai.STEPS_FILE).read_text() == steps
    assert (tmp_path / "two" / cai.DEMOS_FILE).read_text() == demos

    # interrupted after 3 prompts (mid-chunk) with a torn 4th line: 2 processes resume to the same files
    lines = steps.splitlines(keepends=True)
    (tmp_path / "two" / cai.STEPS_FILE).write_text("".join(lines[:3]) + lines[3][:25])
    torchrun("cai", 2, tmp_path / "two", args, "--resume")
    assert (tmp_path / "two" / cai.STEPS_FILE).read_text() == steps
    assert (tmp_path / "two" / cai.DEMOS_FILE).read_text() == demos
