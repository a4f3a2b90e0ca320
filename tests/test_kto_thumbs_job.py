"""`rlhfkit thumbs`: K samples per prompt, each given thumbs up/down by a thumbs annotator (the lab's
simulated one, or your own), written as feedback records that `rlhfkit kto` reads; resume without
duplicates; the pipeline stages thumbs -> kto and compare -> orpo wired end to end."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import build_tiny_model, write_jsonl

from rlhfkit.cli import main
from rlhfkit.config import ConfigError, load_config
from rlhfkit.data import read_feedback, read_jsonl, read_records
from rlhfkit.feedback.registry import THUMBS_ANNOTATORS, register_annotator
from rlhfkit.jobs import thumbs
from rlhfkit.pipeline.stages import PipelineConfig, wiring

WORDS8 = ["was", "is", "and", "plot", "story", "ending", "cast", "music"]


@dataclass
class Verdict:  # the shape of feedback.base.Thumbs
    label: bool
    score: float | None = None


class LengthThumbs:
    """Thumbs up for responses of more than 12 characters; can crash after `fail_after` labels."""

    name = "length"

    def __init__(self, fail_after: int = 0):
        self.fail_after, self.calls = fail_after, 0

    def label(self, prompt: str, completion: str) -> Verdict:
        self.calls += 1
        if self.fail_after and self.calls > self.fail_after:
            raise KeyboardInterrupt("labeller walked away")
        return Verdict(len(completion) > 12, float(len(completion)))


@pytest.fixture(autouse=True)
def _length_thumbs():
    register_annotator("length", LengthThumbs, kind="thumbs")
    yield
    THUMBS_ANNOTATORS.pop("length", None)


@pytest.fixture
def setup(tmp_path):
    model = build_tiny_model(tmp_path / "policy")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"the movie {w}"} for w in WORDS8])
    return model, prompts


def _cfg(model, prompts, *extra):
    return load_config(thumbs.ThumbsConfig, None, [
        f"policy.name_or_path={model}", f"prompts={prompts}", "k=2", "sampling.max_new_tokens=6", "batch_size=3",
        "annotator.name=length", *extra])


def test_each_response_gets_its_own_thumbs_and_kto_reads_them(tmp_path, setup):
    model, prompts = setup
    path = thumbs.run(_cfg(model, prompts), tmp_path / "out")
    assert path == tmp_path / "out" / "feedback.jsonl" and (tmp_path / "out" / "config.yaml").exists()
    records = read_records(path, "feedback")
    assert len(records) == 16 and [r.prompt for r in records] == [f"the movie {w}" for w in WORDS8 for _ in "ab"]
    assert all(r.label == (len(r.completion) > 12) and r.annotator == "length" for r in records)
    assert read_feedback(path) == records  # what kto reads


def test_simulated_thumbs_follow_gold_at_temperature_zero(tmp_path, setup):
    """SimulatedThumbs at T = 0, no flips: thumbs up exactly when the lab gold judge's score of
    (prompt, response) is above the threshold, set between the lowest and highest score so both occur."""
    from rlhfkit.rewards import build_reward

    model, prompts = setup
    cfg = _cfg(model, prompts, "annotator.name=simulated", "annotator.options={temperature: 0.0, threshold: -100.0}")
    rows = read_jsonl(thumbs.run(cfg, tmp_path / "a.jsonl"))  # all up: not a KTO file, read as plain JSON
    gold = build_reward("lab:gold")([r["prompt"] for r in rows], [r["completion"] for r in rows]).rewards.tolist()
    mid = (min(gold) + max(gold)) / 2
    cfg = _cfg(model, prompts, "annotator.name=simulated", f"annotator.options={{temperature: 0.0, threshold: {mid}}}")
    records = read_records(thumbs.run(cfg, tmp_path / "b.jsonl"), "feedback")
    assert [r.label for r in records] == [g > mid for g in gold]
    assert 0 < sum(r.label for r in records) < len(records)


def test_resume_after_a_crash_writes_what_an_uninterrupted_run_writes(tmp_path, setup):
    """The labeller quits after 7 labels (the third chunk of 3 prompts x 2 responses is half done,
    so nothing of it is written); --resume labels the rest: the file equals an uninterrupted run's,
    byte for byte (positional sampling seeds), and resuming a complete file does nothing."""
    model, prompts = setup
    full = thumbs.run(_cfg(model, prompts), tmp_path / "full.jsonl")
    with pytest.raises(KeyboardInterrupt):
        thumbs.run(_cfg(model, prompts, "annotator.options={fail_after: 7}"), tmp_path / "cut.jsonl")
    assert len(read_records(tmp_path / "cut.jsonl", "feedback")) == 6
    with pytest.raises(ConfigError, match="--resume"):
        thumbs.run(_cfg(model, prompts), tmp_path / "cut.jsonl")
    thumbs.run(_cfg(model, prompts), tmp_path / "cut.jsonl", resume=True)
    assert (tmp_path / "cut.jsonl").read_bytes() == full.read_bytes()
    thumbs.run(_cfg(model, prompts), tmp_path / "cut.jsonl", resume=True)
    assert (tmp_path / "cut.jsonl").read_bytes() == full.read_bytes()


def test_resume_drops_a_torn_last_line(tmp_path, setup):
    model, prompts = setup
    full = thumbs.run(_cfg(model, prompts), tmp_path / "full.jsonl")
    lines = full.read_bytes().split(b"\n")
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"\n".join(lines[:4]) + b"\n" + lines[4][:10])  # two prompts, then a torn line
    thumbs.run(_cfg(model, prompts), cut, resume=True)
    assert cut.read_bytes() == full.read_bytes()


def test_user_factory_and_bad_settings(tmp_path, setup):
    model, prompts = setup
    factory = tmp_path / "mine.py"
    factory.write_text("class T:\n    name = 'mine'\n    def label(self, prompt, completion):\n"
                       "        from rlhfkit.feedback.base import Thumbs\n        return Thumbs(label='good' in completion)\n"
                       "def make():\n    return T()\n")
    rows = read_jsonl(thumbs.run(_cfg(model, prompts, f"annotator.name={factory}:make", "k=1"), tmp_path / "m.jsonl"))
    assert len(rows) == 8 and all(r["label"] == ("good" in r["completion"]) and r["annotator"] == "mine" for r in rows)
    with pytest.raises(ConfigError, match="1..9"):
        thumbs.run(_cfg(model, prompts, "k=0"), tmp_path / "k0.jsonl")
    with pytest.raises(ConfigError, match="unknown annotator"):
        thumbs.run(_cfg(model, prompts, "annotator.name=nobody"), tmp_path / "x.jsonl")


def test_cli_thumbs_verb(tmp_path, setup):
    model, prompts = setup
    args = ["thumbs", "--out", str(tmp_path / "t.jsonl"), "--set", f"policy.name_or_path={model}", "--set",
            f"prompts={prompts}", "--set", "sampling.max_new_tokens=4", "--set", "annotator.name=length"]
    assert main(args) == 0
    assert len(read_records(tmp_path / "t.jsonl", "feedback")) == 8


def test_pipeline_wiring_of_thumbs_kto_and_orpo():
    """thumbs samples from the SFT model; kto starts from SFT on the thumbs file, or on the
    comparisons when there is none; orpo starts from the base model on the comparisons."""
    done = {"sft": Path("s/final"), "compare": Path("c/comparisons.jsonl"), "thumbs": Path("t/feedback.jsonl")}
    assert wiring("thumbs", "base", done) == {"policy": {"name_or_path": "s/final"}}
    assert wiring("kto", "base", done) == {"model": {"name_or_path": "s/final"}, "data": {"train": "t/feedback.jsonl"}}
    no_thumbs = {k: v for k, v in done.items() if k != "thumbs"}
    assert wiring("kto", "base", no_thumbs)["data"] == {"train": "c/comparisons.jsonl"}
    assert wiring("orpo", "base", done) == {"model": {"name_or_path": "base"}, "data": {"train": "c/comparisons.jsonl"}}


def test_pipeline_runs_thumbs_kto_compare_orpo_and_evaluates_them(tmp_path):
    """A tiny non-lab base model, no SFT stage: thumbs (simulated, T = 10 so both labels occur) ->
    kto; compare -> orpo; eval on the same prompts with the lab's gold judge: both policies are in
    summary.json and on the frontier, KL measured from the base model."""
    from rlhfkit.pipeline import stages as pipeline

    build_tiny_model(tmp_path / "base")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"the movie {w}"} for w in WORDS8 * 2])
    quiet = {"progress": False, "eval_every": 0, "save_every": 0}
    step = {"max_steps": 2, "batch_size": 8, "micro_batch_size": 8}
    sampling = {"prompts": None, "text": None}
    cfg = load_config(PipelineConfig, None, (), base={"model": str(tmp_path / "base"), "report": False, "stages": [
        {"name": "thumbs", "config": {"prompts": str(prompts), "k": 2, "sampling": {"max_new_tokens": 6},
                                      "annotator": {"options": {"temperature": 10.0}}}},
        {"name": "kto", "config": {"train": step, "log": quiet, "sampling": sampling}},
        {"name": "compare", "config": {"prompts": str(prompts), "k": 2, "sampling": {"max_new_tokens": 6}}},
        {"name": "orpo", "config": {"train": step, "log": quiet, "sampling": sampling}},
        {"name": "eval"},
    ], "eval": {"prompts": str(prompts), "num_prompts": 8, "max_new_tokens": 6, "text": None, "gold": "lab",
                "best_of_n": [], "show_samples": 2}})
    out = pipeline.run(cfg, tmp_path / "run")
    kto_cfg = json.loads((out / "kto" / "stage_complete.json").read_text())["config"]
    assert kto_cfg["data"]["train"] == str(out / "thumbs" / "feedback.jsonl")
    assert kto_cfg["model"]["name_or_path"] == str(tmp_path / "base")  # no SFT stage: the base model
    orpo_cfg = json.loads((out / "orpo" / "stage_complete.json").read_text())["config"]
    assert orpo_cfg["model"]["name_or_path"] == str(tmp_path / "base")
    assert orpo_cfg["data"]["train"] == str(out / "compare" / "comparisons.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"base", "kto", "orpo"} and all("gold/mean" in m for m in summary.values())
    frontier = json.loads((out / "frontier.json").read_text())
    assert {p["method"] for p in frontier} == {"kto", "orpo"} and all(p["kl"] is not None for p in frontier)
