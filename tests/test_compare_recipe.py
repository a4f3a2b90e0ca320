"""`rlhfkit compare`: K samples per prompt ranked by a pluggable annotator, incremental writes,
resume without duplicates, annotators by name."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from conftest import build_tiny_model, write_jsonl

from rlhfkit.cli import main
from rlhfkit.config import ConfigError, load_config
from rlhfkit.data import read_records
from rlhfkit.feedback.registry import ANNOTATORS, build_annotator, register_annotator
from rlhfkit.jobs import compare


@dataclass
class Judgement:  # the shape of feedback.base.Judgement
    ranking: list[int]
    scores: list[float] | None = None
    soft_label: float | None = None


class LengthAnnotator:
    """Prefers longer responses; can be told to crash after `fail_after` judgements."""

    name = "length"

    def __init__(self, fail_after: int = 0):
        self.fail_after, self.calls = fail_after, 0

    def rank(self, prompt: str, responses: list[str]) -> Judgement:
        self.calls += 1
        if self.fail_after and self.calls > self.fail_after:
            raise KeyboardInterrupt("labeller walked away")
        scores = [float(len(r)) for r in responses]
        return Judgement(sorted(range(len(responses)), key=lambda i: (-scores[i], i)), scores)


@pytest.fixture(autouse=True)
def _length_annotator():
    register_annotator("length", LengthAnnotator)
    yield
    ANNOTATORS.pop("length", None)


@pytest.fixture
def setup(tmp_path):
    model = build_tiny_model(tmp_path / "policy")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"the movie {w}"} for w in
                                                        ["was", "is", "and", "plot", "story", "ending", "cast", "music"]])
    return model, prompts


def _args(model, prompts, *extra):
    return ["--set", f"policy.name_or_path={model}", "--set", f"prompts={prompts}", "--set", "k=3",
            "--set", "sampling.max_new_tokens=6", "--set", "batch_size=3", "--set", "annotator.name=length", *extra]


def test_compare_writes_ranked_k_wise_records(tmp_path, setup):
    assert main(["compare", *_args(*setup), "--out", str(tmp_path / "run")]) == 0
    path = tmp_path / "run" / "comparisons.jsonl"
    records = read_records(path, "comparison")
    assert len(records) >= 6  # prompts with < 2 non-empty responses are skipped, not written
    for r in records:
        assert 2 <= len(r.responses) <= 3 and r.annotator == "length"
        lengths = [len(r.responses[i]) for i in r.ranking]
        assert lengths == sorted(lengths, reverse=True) and r.scores is not None
    assert (tmp_path / "run" / "config.yaml").exists()


def test_interrupted_collection_resumes_without_duplicates(tmp_path, setup):
    model, prompts = setup
    full = compare.run(load_config(compare.CompareConfig, None, [a for a in _args(model, prompts) if a != "--set"]),
                       tmp_path / "full.jsonl")
    cfg = load_config(compare.CompareConfig, None,
                      [a for a in _args(model, prompts, "--set", "annotator.options={fail_after: 4}") if a != "--set"])
    cut = tmp_path / "cut.jsonl"
    with pytest.raises(KeyboardInterrupt):
        compare.run(cfg, cut)
    assert len(cut.read_text().splitlines()) == 4  # every judged prompt was flushed before the crash
    with open(cut, "a") as f:
        f.write('{"prompt": "the movie x", "respo')  # a torn line from a crash mid-write
    with pytest.raises(ConfigError, match="--resume"):
        compare.run(cfg, cut)  # refuses to append to an existing file without --resume
    done = load_config(compare.CompareConfig, None, [a for a in _args(model, prompts) if a != "--set"])
    compare.run(done, cut, resume=True)
    a = [json.loads(x) for x in full.read_text().splitlines()]
    b = [json.loads(x) for x in cut.read_text().splitlines()]
    assert [r["prompt"] for r in b] == [r["prompt"] for r in a]  # no duplicates, none missing
    assert [r["responses"] for r in b] == [r["responses"] for r in a]  # same samples as uninterrupted
    compare.run(done, cut, resume=True)  # nothing left to do
    assert len(cut.read_text().splitlines()) == len(a)


def test_k_is_checked_and_unknown_annotators_are_named(tmp_path, setup):
    cfg = load_config(compare.CompareConfig, None, ["k=10"])
    with pytest.raises(ConfigError, match="2..9"):
        compare.run(cfg, tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="unknown annotator 'nobody'.*simulated"):
        build_annotator("nobody")
    with pytest.raises(ValueError, match="bad options"):
        build_annotator("length", {"no_such_option": 1})
    assert build_annotator("test_compare_recipe:LengthAnnotator").name == "length"  # module:factory
