"""Reward recipe on tiny models: learns a rule, HF folder out, resume and accumulation invariance,
ensembles (member 0 = the single run), normalisation, `rlhfkit score`."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import build_tiny_model, crash_at_save, write_jsonl
from transformers import AutoModelForSequenceClassification

from rlhfkit.cli import main
from rlhfkit.config import load_config
from rlhfkit.models.reward import load_reward_model
from rlhfkit.recipes import reward

GOOD = ["great", "good", "fun", "loved", "liked"]
BAD = ["bad", "dull", "hated"]
NEUTRAL = ["the", "movie", "plot", "was", "very", "story", "ending", "and"]


def rule(text: str) -> int:
    words = text.split()
    return sum(w in GOOD for w in words) - sum(w in BAD for w in words)


def comparisons(n: int, k: int, seed: int) -> list[dict]:
    """K responses per prompt with distinct rule scores, ranked by the rule (best first)."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        prompt = " ".join(rng.choice(NEUTRAL) for _ in range(rng.randint(1, 3)))
        responses = []
        for _ in range(k):
            words = [rng.choice(NEUTRAL) for _ in range(rng.randint(2, 5))]
            words += [rng.choice(GOOD + BAD) for _ in range(rng.randint(1, 3))]
            rng.shuffle(words)
            responses.append(" ".join(words) + " .")
        scores = [rule(r) for r in responses]
        if len(set(scores)) < k:
            continue
        rows.append({"prompt": prompt, "responses": responses, "ranking": sorted(range(k), key=lambda i: -scores[i]),
                     "annotator": "rule"})
    return rows


@pytest.fixture
def data(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", comparisons(96, 3, 0))
    held = write_jsonl(tmp_path / "eval.jsonl", comparisons(32, 3, 1))
    return train, held


def _cfg(model, train, held, *extra):
    return load_config(reward.RewardConfig, None, [
        f"model.name_or_path={model}", f"data.train={train}", f"data.eval={held}", "train.batch_size=8",
        "train.micro_batch_size=4", "train.lr=3e-3", "train.max_steps=6", "train.warmup_ratio=0.0",
        "log.save_every=3", "log.eval_every=3", "log.progress=false", "normalize.source=eval_data", *extra])


def _metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_reward_learns_the_rule_and_writes_a_plain_hf_classifier(tmp_path, data):
    model_dir = build_tiny_model(tmp_path / "base")
    final = reward.run(_cfg(model_dir, *data, "train.max_steps=14", "log.save_every=0", "log.eval_every=2"), tmp_path / "run")
    rows = _metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 15))
    assert rows[-1]["eval/accuracy"] > 0.8  # learned the rule ...
    assert rows[-1]["eval/accuracy"] > rows[1]["eval/accuracy"] + 0.1  # ... from a worse start
    hf = AutoModelForSequenceClassification.from_pretrained(final)
    assert hf.config.num_labels == 1 and hf.config.pad_token_id is not None
    norm = json.loads((final / "reward_normalization.json").read_text())
    assert norm["scale"] > 0 and norm["max_length"] == 128
    # After normalisation the held-out responses score mean 0, std 1.
    held = [json.loads(x) for x in data[1].read_text().splitlines()]
    scores = load_reward_model(final).score([r["prompt"] for r in held for _ in r["responses"]],
                                            [x for r in held for x in r["responses"]]).rewards
    assert abs(scores.mean().item()) < 1e-4 and abs(scores.std(correction=0).item() - 1) < 1e-4
    ev = json.loads((tmp_path / "run" / "reward_eval.json").read_text())
    assert sum(b["count"] for b in ev["calibration"]) == ev["eval/pairs"] == 32 * 3


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, data):
    model_dir = build_tiny_model(tmp_path / "m")
    full = reward.run(_cfg(model_dir, *data), tmp_path / "full")
    cfg = _cfg(model_dir, *data)
    with crash_at_save(3):
        reward.run(cfg, tmp_path / "cut")
    resumed = reward.run(cfg, tmp_path / "cut", resume=True)
    a = AutoModelForSequenceClassification.from_pretrained(full).state_dict()
    b = AutoModelForSequenceClassification.from_pretrained(resumed).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    assert [r["step"] for r in _metrics(tmp_path / "cut")] == [1, 2, 3, 4, 5, 6]


def test_gradient_accumulation_does_not_change_training(tmp_path, data):
    """Global batch of 8 prompts as 1 micro-batch of 8 or 4 micro-batches of 2: the same loss and
    gradient norm at step 1 (same weights, different padding and accumulation), and the same
    trajectory after (Adam's sign-like first steps amplify float noise, so weights are not compared)."""
    model_dir = build_tiny_model(tmp_path / "m")
    reward.run(_cfg(model_dir, *data, "train.micro_batch_size=8", "train.max_steps=3", "normalize.source=none"), tmp_path / "a")
    reward.run(_cfg(model_dir, *data, "train.micro_batch_size=2", "train.max_steps=3", "normalize.source=none"), tmp_path / "b")
    one, four = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    assert four[0]["loss/reward"] == pytest.approx(one[0]["loss/reward"], rel=1e-6)
    assert four[0]["train/grad_norm"] == pytest.approx(one[0]["train/grad_norm"], rel=1e-5)
    for x, y in zip(one, four, strict=True):
        assert y["loss/reward"] == pytest.approx(x["loss/reward"], rel=1e-3)
        assert y["reward/accuracy"] == x["reward/accuracy"]


def test_pairwise_chosen_rejected_records_train_as_k2(tmp_path):
    pairs = []
    for r in comparisons(64, 2, 3):
        w, lo = r["ranking"]
        pairs.append({"prompt": r["prompt"], "chosen": r["responses"][w], "rejected": r["responses"][lo]})
    train = write_jsonl(tmp_path / "pairs.jsonl", pairs[:48])
    held = write_jsonl(tmp_path / "held.jsonl", pairs[48:])
    model_dir = build_tiny_model(tmp_path / "m")
    reward.run(_cfg(model_dir, train, held, "train.max_steps=20", "log.save_every=0"), tmp_path / "run")
    rows = _metrics(tmp_path / "run")
    assert rows[0]["train/pairs"] == 8  # one pair per prompt
    assert rows[-1]["eval/accuracy"] >= 0.75


def test_ensemble_member_zero_is_the_single_model_and_cli_scores_it(tmp_path, data, capsys):
    model_dir = build_tiny_model(tmp_path / "m")
    args = ["--set", f"model.name_or_path={model_dir}", "--set", f"data.train={data[0]}", "--set", f"data.eval={data[1]}",
            "--set", "train.batch_size=8", "--set", "train.micro_batch_size=8", "--set", "train.max_steps=4",
            "--set", "log.progress=false", "--set", "log.save_every=0", "--set", "normalize.source=eval_data"]
    assert main(["reward", *args, "--out", str(tmp_path / "single")]) == 0
    assert main(["reward", *args, "--ensemble", "2", "--out", str(tmp_path / "ens")]) == 0
    single, ens = tmp_path / "single" / "final", tmp_path / "ens" / "final"
    manifest = json.loads((ens / "ensemble.json").read_text())
    assert manifest["members"] == ["member-0", "member-1"] and manifest["seeds"] == [0, 1]
    a = AutoModelForSequenceClassification.from_pretrained(single).state_dict()
    b = AutoModelForSequenceClassification.from_pretrained(ens / "member-0").state_dict()
    c = AutoModelForSequenceClassification.from_pretrained(ens / "member-1").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same data: bit-identical
    assert not all(torch.equal(a[k], c[k]) for k in a)  # another seed: another model
    report = json.loads((tmp_path / "ens" / "reward_eval.json").read_text())
    assert set(report) == {"member-0", "member-1", "mean", "min", "uwo"}

    # `rlhfkit score` on demonstrations with the ensemble: members, std and the chosen aggregation.
    demos = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "the movie", "response": "was great ."},
                                               {"prompt": "the plot", "response": "was dull ."}])
    assert main(["score", "--rm", str(ens), "--data", str(demos), "--out", str(tmp_path / "s.jsonl"), "--aggregation", "min"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and len(rows[0]["reward_members"]) == 2
    assert rows[0]["reward"] == pytest.approx(min(rows[0]["reward_members"]), abs=1e-6)
    # ... and on comparisons with the single model: one reward per response.
    assert main(["score", "--rm", str(single), "--data", str(data[1]), "--out", str(tmp_path / "c.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert len(rows) == 32 and len(rows[0]["rewards"]) == 3 and "reward_members" not in rows[0]


def test_resume_after_a_kill_between_final_and_its_normalisation_normalises(tmp_path, data, capsys):
    """final/ is published before reward_normalization.json is written into it: a kill in between
    left a run that `--resume` called complete, with an RM that was never normalised. Now
    run_complete.json names the file still to come ("needs"), so the run is complete only with it."""
    model_dir = build_tiny_model(tmp_path / "m")
    out = tmp_path / "run"
    args = ["--set", f"model.name_or_path={model_dir}", "--set", f"data.train={data[0]}", "--set", f"data.eval={data[1]}",
            "--set", "train.batch_size=8", "--set", "train.micro_batch_size=8", "--set", "train.max_steps=2",
            "--set", "log.progress=false", "--set", "log.save_every=0", "--set", "normalize.source=eval_data"]
    assert main(["reward", *args, "--out", str(out)]) == 0
    norm = out / "final" / "reward_normalization.json"
    expected = json.loads(norm.read_text())
    norm.unlink()  # the kill: final/ in place, its normalisation not yet written
    capsys.readouterr()
    assert main(["reward", *args, "--out", str(out), "--resume"]) == 0
    assert "already complete" not in capsys.readouterr().out
    assert json.loads(norm.read_text()) == expected
    assert main(["reward", *args, "--out", str(out), "--resume"]) == 0  # now it is complete
    assert "already complete" in capsys.readouterr().out
