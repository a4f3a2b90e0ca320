"""No lab default is ever applied to a user's model or data.

On a tiny non-lab model with non-lab data, and RLHFKIT_LAB_DIR pointing at an empty folder:
reward, DPO and PPO (through the CLI) measure on the user's own held-out data or not at all;
no metric comes from the lab's gold judge, no config, metric, summary or report names a lab
source, and the lab is never built. Each run records what its numbers were measured on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import build_tiny_model, random_demos, write_jsonl
from test_dpo_recipe import random_comparisons

from rlhfkit.cli import main
from rlhfkit.evaluate import LAB_JUDGE, LAB_PROMPTS, LAB_TEXT, Source, from_lab, held_out
from rlhfkit.monitor.report import write_report

QUIET = ["log.progress=false", "log.save_every=0"]


@pytest.fixture
def world(tmp_path, monkeypatch):
    lab = tmp_path / "lab"
    lab.mkdir()
    monkeypatch.setenv("RLHFKIT_LAB_DIR", str(lab))
    model = build_tiny_model(tmp_path / "model")
    files = {
        "train": write_jsonl(tmp_path / "train.jsonl", random_comparisons(12, seed=0)),
        "eval": write_jsonl(tmp_path / "eval.jsonl", random_comparisons(4, seed=1)),
        "prompts": write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["prompt"]} for r in random_demos(8, 2)]),
        "demos": write_jsonl(tmp_path / "demos.jsonl", random_demos(8, 3)),
        "demos_eval": write_jsonl(tmp_path / "demos_eval.jsonl", random_demos(4, 4)),
    }
    return lab, model, files


def _strings(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _strings(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _strings(v)
    elif isinstance(tree, str):
        yield tree


def _lab_sources(tree) -> list[str]:
    return [s for s in _strings(tree) if s == "lab" or s.startswith("lab:")]


def _assert_no_lab(run: Path) -> None:
    """Config values, metric keys, run_complete.json and the report: nothing from the lab."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert _lab_sources(config) == [], f"{run.name}/config.yaml names a lab source"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and not [k for r in rows for k in r if k.startswith("gold/")]
    done = json.loads((run / "final" / "run_complete.json").read_text())
    assert done["lab"] is False and not [k for k in done if k.startswith("gold/")] and _lab_sources(done) == []
    page = write_report(run).read_text()
    assert "lab:" not in page
    cells = re.findall(r"<t[hd]>(.*?)</t[hd]>", page, flags=re.S)
    assert cells and not [c for c in cells if "gold" in c], "a report table shows a gold number"


def test_reward_dpo_ppo_on_a_user_model_never_use_the_lab(world, tmp_path, capsys):
    lab, model, f = world
    common = [f"model.name_or_path={model}", "train.max_steps=2", "train.batch_size=4", "train.micro_batch_size=4", *QUIET]

    def run(verb, out, *sets):
        args = [verb, "--out", str(out)]
        for a in (*common, *sets):
            args += ["--set", a]
        assert main(args) == 0, capsys.readouterr().err
        return capsys.readouterr().out

    printed = run("reward", tmp_path / "rm", f"data.train={f['train']}", f"data.eval={f['eval']}",
                  "normalize.num_prompts=4", "normalize.max_new_tokens=4")
    assert "[reward] held-out judge off" in printed
    done = json.loads((tmp_path / "rm" / "final" / "run_complete.json").read_text())
    assert done["normalize/prompts_on"] == f"prompts of held-out comparisons {f['eval']}"
    norm = json.loads((tmp_path / "rm" / "final" / "reward_normalization.json").read_text())
    assert norm["stats"]["prompts"] == done["normalize/prompts_on"]
    samples = [json.loads(x)["prompt"] for x in (tmp_path / "rm" / "normalization_samples.jsonl").read_text().splitlines()]
    assert set(samples) <= {r["prompt"] for r in random_comparisons(4, seed=1)}  # its own held-out prompts

    printed = run("dpo", tmp_path / "dpo", f"data.train={f['train']}", f"data.eval={f['eval']}",
                  "sampling.num_prompts=4", "sampling.max_new_tokens=4", "log.eval_every=1")
    assert "[dpo] held-out judge off" in printed
    done = json.loads((tmp_path / "dpo" / "final" / "run_complete.json").read_text())
    assert done["eval/prompts_on"] == f"prompts of held-out comparisons {f['eval']}"
    assert done["eval/perplexity_on"] == f"chosen responses of held-out comparisons {f['eval']}"
    assert "kl/mean" in done and "eval/perplexity" in done  # measured, on the user's held-out comparisons

    printed = run("ppo", tmp_path / "ppo", f"data.prompts={f['prompts']}", f"reward.source={tmp_path / 'rm' / 'final'}",
                  "rollout.max_new_tokens=4", "log.eval_every=1")
    assert "[ppo] held-out text off" in printed and "[ppo] held-out judge off" in printed
    done = json.loads((tmp_path / "ppo" / "final" / "run_complete.json").read_text())
    assert done["reward/source"] == str(tmp_path / "rm" / "final") and "eval/perplexity_on" not in done

    for run_dir in ("rm", "dpo", "ppo"):
        _assert_no_lab(tmp_path / run_dir)
    assert list(lab.iterdir()) == []  # never built


def test_no_lab_reward_or_prompts_are_guessed_for_a_user_model(world, tmp_path, capsys):
    """Where a job cannot go on without a lab default (PPO's reward, sample's and best-of-n's
    prompts, eval with nothing to measure), it stops with one line naming the setting."""
    lab, model, f = world
    cases = [
        (["ppo", "--out", str(tmp_path / "p"), "--set", f"model.name_or_path={model}", "--set",
          f"data.prompts={f['prompts']}"], "'reward.source'"),
        (["sample", "--model", str(model), "--out", str(tmp_path / "s.jsonl")], "--prompts"),
        (["eval", "--model", str(model)], "--prompts and/or --text"),
        (["best-of-n", "--model", str(model), "--prompts", str(f["prompts"]), "--out", str(tmp_path / "b.jsonl")],
         "--reward"),
    ]
    for argv, says in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err
    assert list(lab.iterdir()) == []


def test_pipeline_on_a_user_model_evaluates_on_its_own_held_out_data(world, tmp_path, capsys):
    """The pipeline's eval stage, off the lab: prompts and perplexity text from the sft stage's
    held-out demonstrations, no gold; summary.json and the report say what it was measured on."""
    from rlhfkit.config import load_config
    from rlhfkit.pipeline import stages as pipeline

    lab, model, f = world
    cfg = load_config(pipeline.PipelineConfig, None, (), base={
        "model": str(model),
        "stages": [{"name": "sft", "config": {"data": {"train": str(f["demos"]), "eval": str(f["demos_eval"])},
                                              "train": {"max_steps": 1, "batch_size": 4, "micro_batch_size": 4},
                                              "log": {"progress": False, "save_every": 0}}},
                   {"name": "eval"}],
        "eval": {"num_prompts": 4, "max_new_tokens": 4, "text_examples": 4}})
    out = pipeline.run(cfg, tmp_path / "pipe")
    summary = json.loads((out / "summary.json").read_text())
    own = str(f["demos_eval"])
    for m in summary.values():
        assert m["eval/prompts_on"] == f"prompts of held-out demonstrations {own}"
        assert m["eval/perplexity_on"] == f"responses of held-out demonstrations {own}"
        assert "kl/mean" in m and "eval/perplexity" in m and not [k for k in m if k.startswith("gold/")]
    samples = json.loads((out / "samples.json").read_text())
    assert {s["prompt"] for s in samples} <= {d["prompt"] for d in random_demos(4, 4)} and "gold" not in samples[0]
    assert json.loads((out / "frontier.json").read_text())[0]["gold"] is None  # no best-of-n on gold either
    page = (out / "report.html").read_text()
    assert f"Measured on: eval/prompts_on: prompts of held-out demonstrations {own}" in page and "lab:" not in page
    assert "[eval] held-out judge off" in capsys.readouterr().out
    assert list(lab.iterdir()) == []


# ----------------------------------------------------------------------------- the one decision


def test_from_lab_marks(tmp_path):
    lab = tmp_path / "lab"  # a built lab's layout (any folder, not only the default one)
    (lab / "base").mkdir(parents=True)
    (lab / "data").mkdir()
    (lab / "manifest.json").write_text("{}")
    user, derived, legacy = (tmp_path / n for n in ("user", "derived", "legacy"))
    for folder, mark in ((user, {"lab": False}), (derived, {"lab": True}), (legacy, {"stage": "sft"})):
        folder.mkdir()
        (folder / "run_complete.json").write_text(json.dumps(mark))
    assert from_lab("lab") and from_lab("lab:prompts_eval") and from_lab(lab / "base") and from_lab(derived)
    assert not from_lab(user) and not from_lab(legacy) and not from_lab("gpt2") and not from_lab(None)
    (lab / "data" / "prompts_eval.jsonl").write_text("")
    assert from_lab(lab / "data" / "prompts_eval.jsonl") and not from_lab(tmp_path)


def test_held_out_decides_in_one_place(tmp_path, capsys):
    """auto: the lab's judge/prompts/text in the lab world, else the run's own split, else off
    with one printed line each; a named source is used as named; null is off without a word."""
    lab = held_out("x", "lab", [], judge="auto", prompts="auto", text="auto", own_prompts="mine", own_text="mine")
    assert (lab.judge, lab.prompts.spec, lab.text.spec) == (LAB_JUDGE, LAB_PROMPTS, LAB_TEXT)
    assert held_out("x", "m", ["lab:sft_train"], judge="auto").judge == LAB_JUDGE  # lab data
    assert held_out("x", "m", [], judge="auto", lab_data=True).judge == LAB_JUDGE  # e.g. lab annotators
    assert capsys.readouterr().out == ""
    own = held_out("x", "m", ["d.jsonl"], judge="auto", prompts="auto", text="auto", own_prompts="p", own_text="t")
    assert own.judge is None and own.prompts == Source("p", None) and own.text.on == "t"
    assert capsys.readouterr().out.strip().splitlines() == [
        "[x] held-out judge off (no gold/*): the model (m) and the data are not the lab's; set gold=lab to use the "
        "lab's gold judge anyway"]
    off = held_out("x", "m", [], prompts="auto", text="auto", keys={"text": "sampling.text"})
    assert off.prompts is None and off.text is None
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    named = held_out("x", "m", [], judge="lab", prompts="lab:prompts_eval", text=None)
    assert (named.judge, named.prompts.spec, named.text) == (LAB_JUDGE, LAB_PROMPTS, None)
    assert held_out("x", "lab", [], judge=False, prompts=None, text=None).provenance() == {}
    assert capsys.readouterr().out == ""
