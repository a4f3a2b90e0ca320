"""The run folder's lifecycle through `rlhfkit <verb>`: nothing is written before the inputs are
checked, a finished run is replaced only with --overwrite (which leaves nothing stale), --resume
refuses a changed config, and a resume without a checkpoint starts a clean log."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import WORDS, build_tiny_model, crash_at_save, random_demos, write_jsonl

from rlhfkit.cli import main
from rlhfkit.recipes.sft import SFTConfig
from rlhfkit.train.run_dir import SAFE_ON_RESUME, RunDir


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def sets(*pairs: str) -> list[str]:
    return [x for p in pairs for x in ("--set", p)]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """One tiny model and small data files for every verb (built once: the tests only read them)."""
    d = tmp_path_factory.mktemp("world")
    rng = random.Random(0)
    content = [w for w in WORDS if w not in ".!,"]
    comparisons = [{"prompt": " ".join(rng.choice(content) for _ in range(2)),
                    "responses": [" ".join(rng.choice(content) for _ in range(3)) + " ." for _ in range(2)],
                    "ranking": [0, 1]} for _ in range(24)]
    return {"model": build_tiny_model(d / "model"),
            "demos": write_jsonl(d / "demos.jsonl", random_demos(32, 0)),
            "prompts": write_jsonl(d / "prompts.jsonl", [{"prompt": r["prompt"]} for r in random_demos(32, 2)]),
            "comparisons": write_jsonl(d / "comparisons.jsonl", comparisons)}


def sft_args(world, out: Path, *extra: str) -> list[str]:
    """4 SFT steps of batch 8, a checkpoint at step 2 (step 4 is final/, never a checkpoint)."""
    return ["sft", "--out", out, *sets(f"model.name_or_path={world['model']}", f"data.train={world['demos']}",
                                       "data.eval=null", "train.batch_size=8", "train.micro_batch_size=8",
                                       "train.lr=1e-2", "train.max_steps=4", "log.save_every=2", "log.eval_every=0",
                                       "log.progress=false", *extra)]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def steps(out: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().split("\n") if x]


# ----------------------------------------------------------------------------- 1. validate before writing


MISSING = "/no/such/data.jsonl"


@pytest.mark.parametrize("verb", ["sft", "dpo", "ppo", "reward", "reward-ensemble", "iterate"])
def test_a_start_that_fails_on_its_data_writes_no_folder(tmp_path, capsys, world, verb):
    """Before: sft, dpo and ppo created the folder, an empty metrics.jsonl and config.yaml before
    reading their data; iterate wrote config.yaml first."""
    model = f"model.name_or_path={world['model']}"
    argv = {
        "sft": ["sft", *sets(model, f"data.train={MISSING}")],
        "dpo": ["dpo", *sets(model, f"data.train={MISSING}")],
        "ppo": ["ppo", *sets(model, f"data.prompts={MISSING}", "reward.source=lab:gold")],
        "reward": ["reward", *sets(model, f"data.train={MISSING}")],
        "reward-ensemble": ["reward", "--ensemble", "2", *sets(model, f"data.train={MISSING}")],
        "iterate": ["iterate", *sets(f"policy.name_or_path={world['model']}", f"prompts={MISSING}")],
    }[verb]
    out = tmp_path / "run"
    rc, _, err = cli(capsys, *argv, "--out", out)
    assert rc == 2 and MISSING in err and "Traceback" not in err
    assert not out.exists()


def test_overwrite_with_a_data_typo_leaves_the_finished_run_as_it_was(tmp_path, capsys, world):
    """The reported loss: rerunning a finished run's command with a typo in the data path wiped its
    metrics (275 -> 0 bytes). Nothing is touched until the data has been read."""
    out = tmp_path / "run"
    assert cli(capsys, *sft_args(world, out))[0] == 0
    before = snapshot(out)
    rc, _, err = cli(capsys, *sft_args(world, out, f"data.train={MISSING}"), "--overwrite")
    assert rc == 2 and MISSING in err
    assert snapshot(out) == before


# ----------------------------------------------------------------------------- 2. finished runs


def test_a_finished_run_is_kept_unless_overwrite(tmp_path, capsys, world):
    out = tmp_path / "run"
    assert cli(capsys, *sft_args(world, out))[0] == 0
    before = snapshot(out)
    rc, _, err = cli(capsys, *sft_args(world, out))
    assert rc == 2 and err.strip() == f"rlhfkit sft: error: {out} holds a finished run; pass --overwrite to " \
                                      "replace it, or choose another --out"
    rc, stdout, _ = cli(capsys, *sft_args(world, out), "--resume")
    assert rc == 0 and stdout.splitlines()[0] == f"{out} is already complete; nothing to do"
    assert snapshot(out) == before


def test_overwrite_removes_everything_the_old_run_left(tmp_path, capsys, world):
    """With --overwrite, no metric, checkpoint, alarm, plot, report or model of the old run
    survives beside the new one; files that are not run artifacts are left alone."""
    out = tmp_path / "run"
    assert cli(capsys, *sft_args(world, out, "train.max_steps=6"))[0] == 0
    stale = ["alarms.jsonl", "report.html", "report_plots/loss.png", "best/best.json", "reward_eval.json",
             "members/member-0/config.yaml", "round-1/prompts.jsonl", "normalization_samples.jsonl",
             "checkpoints/step-99/checkpoint_complete.json"]
    for name in [*stale, "notes.txt"]:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("{}")
    rc, _, _ = cli(capsys, *sft_args(world, out), "--overwrite")
    assert rc == 0
    assert [name for name in stale if (out / name).exists()] == []
    assert (out / "notes.txt").exists()
    assert steps(out) == [1, 2, 3, 4]  # the old run's 6 rows are gone
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2"]
    assert json.loads((out / "final" / "run_complete.json").read_text())["steps"] == 4


def test_reward_ensemble_over_a_single_rm_run_leaves_no_stale_metrics(tmp_path, capsys, world):
    """The reported case: `reward --ensemble 3` into an earlier runs/rm kept the single RM's metrics,
    checkpoints and plots, and the report showed "in progress, 0 steps" beside stale curves."""
    out = tmp_path / "rm"
    args = ["reward", "--out", out, *sets(f"model.name_or_path={world['model']}", f"data.train={world['comparisons']}",
                                           "data.eval_fraction=0.25", "normalize.source=none", "data.gold=none",
                                           "train.batch_size=4", "train.micro_batch_size=4", "train.max_steps=2",
                                           "log.save_every=1", "log.progress=false")]
    assert cli(capsys, *args)[0] == 0
    assert (out / "checkpoints").is_dir() and {r["stage"] for r in map(json.loads, (out / "metrics.jsonl").open())} == {"reward"}
    (out / "report_plots").mkdir()
    (out / "report_plots" / "reward.png").write_bytes(b"png")
    assert cli(capsys, *args, "--ensemble", "2")[0] == 2  # a finished run is not replaced silently
    assert cli(capsys, *args, "--ensemble", "2", "--overwrite")[0] == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().split("\n") if x]
    assert [r["stage"] for r in rows] == ["reward_ensemble"]
    assert not (out / "checkpoints").exists() and not (out / "report_plots").exists()
    assert (out / "final" / "ensemble.json").is_file()


# ----------------------------------------------------------------------------- 3. unfinished runs, resume


def test_an_unfinished_run_needs_resume_or_overwrite(tmp_path, capsys, world):
    out = tmp_path / "run"
    with crash_at_save(2):
        cli(capsys, *sft_args(world, out))
    before = snapshot(out)
    rc, _, err = cli(capsys, *sft_args(world, out))
    assert rc == 2 and "holds an unfinished run; pass --resume to continue it or --overwrite to start over" in err
    assert snapshot(out) == before
    assert cli(capsys, *sft_args(world, out), "--resume")[0] == 0
    assert steps(out) == [1, 2, 3, 4]


def test_resume_refuses_a_changed_config_but_allows_the_safe_keys(tmp_path, capsys, world):
    """Before: `--resume --set train.lr=1e-3` silently resumed with the new lr and rewrote config.yaml."""
    out = tmp_path / "run"
    with crash_at_save(2):
        cli(capsys, *sft_args(world, out))
    config = (out / "config.yaml").read_text()
    rc, _, err = cli(capsys, *sft_args(world, out, "train.lr=1e-3", "train.seed=3"), "--resume")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "train.seed (0 -> 3)" in err and "train.lr (0.01 -> 0.001)" in err
    assert (out / "config.yaml").read_text() == config
    # How long to train and what to log may change: the run goes on to step 6 and records it.
    rc, _, _ = cli(capsys, *sft_args(world, out, "train.max_steps=6", "log.save_every=3"), "--resume")
    assert rc == 0 and steps(out) == [1, 2, 3, 4, 5, 6]
    assert "max_steps: 6" in (out / "config.yaml").read_text()


def test_safe_keys_are_listed_in_the_resume_help(capsys):
    """The --resume help names the keys that may change; it must follow SAFE_ON_RESUME."""
    with pytest.raises(SystemExit):
        main(["sft", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for key in SAFE_ON_RESUME:
        assert key in text


def test_resume_after_a_kill_during_the_first_checkpoint_starts_a_clean_log(tmp_path, capsys, world):
    """A kill while checkpoint 2 was being written leaves a .tmp-step-2-* folder and no checkpoint.
    Before: --resume restarted from step 0 but kept the old rows (steps 1, 2, 1, 2, 3, 4)."""
    out = tmp_path / "run"
    with crash_at_save(2, written=False):
        cli(capsys, *sft_args(world, out))
    (out / "checkpoints" / ".tmp-step-2-12345").mkdir(parents=True)
    assert steps(out) == [1, 2]
    rc, stdout, _ = cli(capsys, *sft_args(world, out), "--resume")
    assert rc == 0 and "starting fresh from step 0" in stdout
    assert steps(out) == [1, 2, 3, 4]


def test_fresh_prepare_clears_iterate_rounds_but_resume_keeps_them(tmp_path):
    """iterate's --overwrite must drop its round-*/ folders (compare refuses to append to an old
    round's comparisons); a resume keeps them."""
    run = RunDir(tmp_path)
    (tmp_path / "round-1").mkdir()
    (tmp_path / "config.yaml").write_text("{}")
    run.prepare(SFTConfig(), fresh=False)
    assert (tmp_path / "round-1").exists()
    run.prepare(SFTConfig(), fresh=True)
    assert not (tmp_path / "round-1").exists() and (tmp_path / "config.yaml").exists()
