"""`rlhfkit compare` under 2 processes (torchrun, gloo, CPU) writes comparisons.jsonl byte for byte
as 1 process does: each process samples whole chunks with their positional seeds, and the main
process alone annotates and writes, in prompt order. The annotator here is stateful (a seeded coin),
so per-process annotators, rank-dependent seeds or a second writer would all change the file."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
from conftest import build_tiny_model, torchrun, write_jsonl

from rlhfkit.config import load_config
from rlhfkit.feedback.base import Judgement
from rlhfkit.jobs import compare
from rlhfkit.train.processes import sharded_chunks


class Coin:
    """Ranks responses in a random order drawn from one seeded RNG: the labels depend on how many
    prompts this annotator has ranked before, as with a simulated annotator's noise."""

    name = "coin"

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def rank(self, prompt, responses):
        order = list(range(len(responses)))
        self.rng.shuffle(order)
        return Judgement(order, None)


def coin(seed: int = 0) -> Coin:
    return Coin(seed)


def test_sharded_chunks_give_each_process_one_chunk_per_wave(monkeypatch):
    """5 chunks over 2 processes: rank 1 computes chunks 1 and 3 only (none in the last wave), and
    every process yields all chunks in order from the gathered results."""
    import accelerate.utils

    def fake_gather(mine):  # what rank 0 would contribute, then this process's result
        return [("rank0",), *mine]

    monkeypatch.setattr(accelerate.utils, "gather_object", fake_gather)
    state = SimpleNamespace(num_processes=2, process_index=1)
    done = []

    def work(chunk):
        done.append(chunk[0])
        return chunk[0]

    got = list(sharded_chunks(10, 2, [0, 1, 4, 5, 6, 7, 8, 9], state, work))  # chunk [2, 3] is done
    # chunks with todo prompts: starts 0, 4, 6, 8 -> waves (0, 4), (6, 8); rank 1 takes 4 and 8
    assert done == [4, 8]
    assert [c for c, _ in got] == [[0, 1], [4, 5], [6, 7], [8, 9]]
    assert [r for _, r in got] == [("rank0",), 4, ("rank0",), 8]
    one = SimpleNamespace(num_processes=1, process_index=0)
    assert [r for _, r in sharded_chunks(5, 2, [4], one, lambda c: c)] == [[4]]


@pytest.mark.slow
def test_two_processes_write_the_same_comparisons_as_one(tmp_path):
    model = build_tiny_model(tmp_path / "m")
    words = ["was", "is", "and", "plot", "story", "ending", "cast", "music", "acting", "film", "it"]
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"the movie {w}"} for w in words])
    # 11 prompts in chunks of 2: 6 chunks, the last one short
    args = [f"policy.name_or_path={model}", f"prompts={prompts}", "k=3", "sampling.max_new_tokens=6",
            "batch_size=2", f"annotator.name={__name__}:coin", "annotator.options={seed: 3}"]
    compare.run(load_config(compare.CompareConfig, None, args), tmp_path / "one")  # 1 process: this one
    torchrun("compare", 2, tmp_path / "two", args)
    one = (tmp_path / "one" / "comparisons.jsonl").read_text()
    two = (tmp_path / "two" / "comparisons.jsonl").read_text()
    rows = [json.loads(x) for x in one.splitlines()]
    assert len(rows) >= 8 and [r["prompt"] for r in rows] == sorted({r["prompt"] for r in rows}, key=[f"the movie {w}" for w in words].index)
    assert two == one
    assert (tmp_path / "two" / "config.yaml").read_text() == (tmp_path / "one" / "config.yaml").read_text()

    # interrupted after 3 records with a torn 4th line: 2 processes resume with the same responses
    lines = one.splitlines(keepends=True)
    (tmp_path / "two" / "comparisons.jsonl").write_text("".join(lines[:3]) + lines[3][:20])
    torchrun("compare", 2, tmp_path / "two", args, "--resume")
    resumed = [json.loads(x) for x in (tmp_path / "two" / "comparisons.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["responses"]) for r in resumed] == [(r["prompt"], r["responses"]) for r in rows]
