"""Every user error is one line on stderr and exit status 2, through `rlhfkit.cli.main`; a failed
start writes no run folder. And code named in a config (`module:function`) is never imported
from the current folder by a bare name, only from an installed module or an explicit file path."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import build_tiny_model, random_demos, write_jsonl

from rlhfkit.cli import main
from rlhfkit.config import ConfigError
from rlhfkit.feedback.registry import build_annotator


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("world")
    demos = random_demos(16, 0)
    pairs = [{"prompt": a["prompt"], "chosen": a["response"], "rejected": b["response"]}
             for a, b in zip(demos, demos[1:] + demos[:1], strict=True)]
    return {"model": build_tiny_model(d / "model"),
            "prompts": write_jsonl(d / "prompts.jsonl", [{"prompt": r["prompt"]} for r in demos]),
            "pairs": write_jsonl(d / "pairs.jsonl", pairs),
            "four": write_jsonl(d / "four.jsonl", pairs[:4])}


def one_line_error(capsys, verb: str, *argv) -> str:
    """Run the CLI; assert exit 2 and that stderr ends with exactly one error line, no traceback."""
    capsys.readouterr()
    rc = main([verb, *map(str, argv)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith(f"rlhfkit {verb}: error: ")
    return last


def sets(*pairs: str) -> list[str]:
    return [x for p in pairs for x in ("--set", p)]


def test_ppo_with_a_missing_reward_source(tmp_path, capsys, world):
    out = tmp_path / "run"
    line = one_line_error(capsys, "ppo", "--out", out, *sets(
        f"model.name_or_path={world['model']}", f"data.prompts={world['prompts']}", "reward.source=runs/no-such-rm",
        "eval.text=null", "train.batch_size=4", "train.micro_batch_size=4"))
    assert "'runs/no-such-rm'" in line
    assert not out.exists()


@pytest.mark.parametrize("bad, key", [("beta=0", "beta"), ("label_smoothing=0.7", "label_smoothing")])
def test_dpo_config_checks(tmp_path, capsys, world, bad, key):
    line = one_line_error(capsys, "dpo", "--out", tmp_path / "run", *sets(f"data.train={world['pairs']}", bad))
    assert f"'{key}'" in line


@pytest.mark.parametrize("overrides, words", [
    (["rounds=0"], "need rounds >= 1"),
    (["rounds=3", "label_budget=2"], "label_budget >= rounds"),
    (["rounds=2", "label_budget=40"], "has 16 prompts; 2 rounds x 20 labels need 40"),
])
def test_iterate_rounds_budget_and_prompts(tmp_path, capsys, world, overrides, words):
    out = tmp_path / "run"
    line = one_line_error(capsys, "iterate", "--out", out,
                          *sets(f"policy.name_or_path={world['model']}", f"prompts={world['prompts']}", *overrides))
    assert words in line
    assert not out.exists()


def test_best_of_n_with_n_zero(tmp_path, capsys, world):
    line = one_line_error(capsys, "best-of-n", "--model", world["model"], "--prompts", world["prompts"],
                          "--n", "0", "--out", tmp_path / "b.jsonl")
    assert "--n must be at least 1" in line


def test_too_few_examples_for_the_global_batch(tmp_path, capsys, world):
    """4 comparisons with batch 4: the held-out split (eval_fraction 0.1 -> 1 record) leaves 3."""
    out = tmp_path / "rm"
    line = one_line_error(capsys, "reward", "--out", out, *sets(
        f"model.name_or_path={world['model']}", f"data.train={world['four']}", "train.batch_size=4",
        "train.micro_batch_size=4", "normalize.source=none"))
    assert "only 3 training examples" in line and "train.batch_size" in line
    assert not out.exists()


# ----------------------------------------------------------------------------- code specs


CODE = """
from pathlib import Path
Path(__file__).with_name("imported.txt").write_text("ran")  # importing a module runs its code


def score(prompts, responses):
    return [float(len(r)) for r in responses]


class Counter:
    name = "counter"

    def rank(self, prompt, responses):
        raise NotImplementedError
"""


@pytest.fixture
def cwd_module(tmp_path, monkeypatch) -> Path:
    """`scores.py` in the current folder, which is first on sys.path as under `python -m rlhfkit.cli`."""
    folder = tmp_path / "here"
    folder.mkdir()
    (folder / "scores.py").write_text(CODE)
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "scores", raising=False)
    return folder


def test_a_bare_spec_does_not_import_from_the_current_folder(capsys, world, cwd_module):
    line = one_line_error(capsys, "best-of-n", "--model", world["model"], "--prompts", world["prompts"],
                          "--n", "2", "--limit", "2", "--max-new-tokens", "4", "--reward", "scores:score",
                          "--out", "b.jsonl")
    assert "cannot import scores" in line and "./scores.py" in line
    assert not (cwd_module / "imported.txt").exists()
    with pytest.raises(ConfigError, match="cannot import scores"):
        build_annotator("scores:Counter")
    assert not (cwd_module / "imported.txt").exists()


def test_an_explicit_file_spec_is_imported(capsys, world, cwd_module):
    rc = main(["best-of-n", "--model", str(world["model"]), "--prompts", str(world["prompts"]), "--n", "2",
               "--limit", "2", "--max-new-tokens", "4", "--reward", "./scores.py:score", "--out", "b.jsonl"])
    assert rc == 0 and (cwd_module / "imported.txt").read_text() == "ran"
    rows = [json.loads(x) for x in Path("b.jsonl").read_text().split("\n") if x]
    assert [r["reward"] for r in rows] == [float(len(r["response"])) for r in rows]  # scored by score()
    assert build_annotator(str(cwd_module / "scores.py") + ":Counter").name == "counter"
