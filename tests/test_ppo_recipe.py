"""The PPO recipe on tiny models: a 1-token bandit, resume == uninterrupted, padding invariance,
the critic's initialisation, PPO-ptx and the missing-EOS penalty."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import build_tiny_model, random_demos, write_jsonl
from safetensors.torch import load_file

from rlhfkit.config import load_config
from rlhfkit.experience import build_rollout, forward_window, response_labels, response_logits
from rlhfkit.recipes.ppo import PPOConfig, run


def great_first(prompts, responses):
    """1 when the response is the word 'great' (the bandit's rewarded arm), else 0."""
    return [float(r.split()[:1] == ["great"]) for r in responses]


def count_great(prompts, responses):
    return [r.split().count("great") / 4 for r in responses]


def _cfg(model, prompts, *overrides):
    return load_config(PPOConfig, None, [
        f"model.name_or_path={model}", f"data.prompts={prompts}", "eval.text=null", "log.progress=false",
        "train.batch_size=16", "train.micro_batch_size=8", "rollout.max_new_tokens=6", *overrides,
    ])


def _prob_of(model_dir, tokenizer_word_prompt: str, word: str) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tok(tokenizer_word_prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        p = model(input_ids=ids).logits[0, -1].softmax(-1)
    return p[tok.convert_tokens_to_ids(word)].item()


def test_one_token_bandit_moves_probability_to_the_rewarded_token(tmp_path):
    """Prompt 'the', one response token, reward 1 for 'great' (1 arm of ~34): PPO must move
    P(great | the) from about 1/V to a majority."""
    model = build_tiny_model(tmp_path / "m")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "the"}] * 32)
    before = _prob_of(model, "the", "great")
    cfg = _cfg(model, prompts, f"reward.source={__name__}:great_first", "rollout.max_new_tokens=1",
               "reward.missing_eos_penalty=0", "ppo.kl_coef=0", "train.lr=1e-2", "train.max_steps=12",
               "train.batch_size=32", "train.micro_batch_size=32", "log.save_every=0")
    final = run(cfg, tmp_path / "run")
    after = _prob_of(final, "the", "great")
    assert before < 0.1
    assert after > 0.5, (before, after)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["reward/mean"] > rows[0]["reward/mean"]
    required = {"reward/mean", "reward/total", "kl/mean", "kl/beta", "loss/policy", "loss/value", "policy/clipfrac",
                "policy/approx_kl", "policy/entropy", "value/explained_variance", "response/length"}
    assert required <= set(rows[0])


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    """4 steps straight vs 2 steps + resume from checkpoint step-2: same final policy, critic,
    beta trajectory (adaptive KL) and logged metrics."""
    model = build_tiny_model(tmp_path / "m")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": d["prompt"]} for d in random_demos(32, 0)])
    cfg = _cfg(model, prompts, f"reward.source={__name__}:count_great", "train.max_steps=4", "log.save_every=2",
               "ppo.kl_target=0.5", "ppo.kl_horizon=100", "ppo.num_minibatches=2", "ppo.ppo_epochs=2",
               "train.lr=3e-3", "train.schedule=linear")
    a = tmp_path / "a"
    run(cfg, a)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    shutil.rmtree(b / "final")
    assert [p.name for p in (b / "checkpoints").iterdir()] == ["step-2"]
    run(cfg, b, resume=True)
    for part in ("model.safetensors", "critic/model.safetensors"):
        wa, wb = load_file(str(a / "final" / part)), load_file(str(b / "final" / part))
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)
    ma = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in mb] == [1, 2, 3, 4]
    for ra, rb in zip(ma, mb, strict=True):
        for k in ("kl/beta", "reward/mean", "kl/mean", "loss/policy"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-7), k
    assert ma[-1]["kl/beta"] != ma[0]["kl/beta"]  # the controller did move


def test_logps_do_not_depend_on_padding_or_batch_company(tmp_path):
    """A row's response log-probs are the same alone or batched with longer prompts/responses
    (left-padded prompt, right-padded response, positions from the mask)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "m")).eval()
    prompts = [[5, 6], [7, 8, 9, 10, 11], [12]]
    responses = [[13, 14, 1], [15, 16, 17, 18, 19, 20], [21]]
    roll = build_rollout(prompts, responses, pad=0, device="cpu")
    with torch.no_grad():
        together_in, r = forward_window(roll, torch.arange(3))
        together = response_logits(model, together_in, r, 0.7)
        lab = response_labels(roll, torch.arange(3), r)
        for i in range(3):
            alone = build_rollout([prompts[i]], [responses[i]], pad=0, device="cpu")
            inp, ri = forward_window(alone, torch.tensor([0]))
            lp_alone = torch.log_softmax(response_logits(model, inp, ri, 0.7)[0], -1)
            lp_together = torch.log_softmax(together[i, :ri], -1)
            torch.testing.assert_close(lp_alone, lp_together, rtol=0, atol=1e-5)
            assert lab[i, : len(responses[i])].tolist() == responses[i]
            assert (lab[i, len(responses[i]) :] == -100).all()


def test_critic_from_policy_starts_at_zero_and_from_a_classifier_keeps_its_head(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.config import ModelConfig
    from rlhfkit.models.value import load_value_model, token_values

    model = build_tiny_model(tmp_path / "m")
    ids = torch.tensor([[5, 6, 7, 8]])
    att = torch.ones_like(ids)
    critic = load_value_model("policy", ModelConfig(name_or_path=str(model)))
    assert token_values(critic, ids, att).abs().max().item() == 0.0
    rm = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1)
    rm.config.pad_token_id = 0
    with torch.no_grad():
        rm.score.weight.normal_()
    rm.save_pretrained(tmp_path / "rm")
    critic = load_value_model(str(tmp_path / "rm"), ModelConfig(name_or_path=str(model)))
    v = token_values(critic, ids, att)
    assert v.shape == (1, 4) and v.abs().min().item() > 0
    torch.testing.assert_close(critic.score.weight, rm.score.weight)


def test_ptx_term_and_missing_eos_penalty_are_applied(tmp_path):
    """With ptx on, loss/ptx is logged; the penalty moves the score by exactly
    penalty * (share of responses without EOS)."""
    model = build_tiny_model(tmp_path / "m")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": d["prompt"]} for d in random_demos(16, 0)])
    text = write_jsonl(tmp_path / "t.jsonl", [{"text": d["prompt"] + " " + d["response"]} for d in random_demos(16, 1)])
    cfg = _cfg(model, prompts, f"reward.source={__name__}:count_great", "train.max_steps=2", "ppo.ptx_coef=0.5",
               f"data.ptx={text}", "data.ptx_batch_size=4", "reward.missing_eos_penalty=-2.0", "log.save_every=0",
               f"eval.text={text}", "log.eval_every=2")
    run(cfg, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        assert r["loss/ptx"] > 0
        assert r["reward/score"] == pytest.approx(r["reward/mean"] - 2.0 * (1 - r["response/eos_rate"]), abs=1e-5)
    assert rows[-1]["eval/perplexity"] > 1
    assert (tmp_path / "run" / "final" / "critic" / "model.safetensors").exists()


@pytest.mark.slow
def test_two_processes_run_and_checkpoint(tmp_path):
    """Under torch.distributed.run with 2 CPU processes (gloo): PPO trains (DDP on policy and
    critic), logs one row per step and checkpoints every process's RNG (rollouts differ per
    process seed, so there is no parity with 1 process to check)."""
    import os
    import socket
    import subprocess
    import sys

    model = build_tiny_model(tmp_path / "m")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": d["prompt"]} for d in random_demos(32, 0)])

    def launch(steps, resume):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
               "-m", "rlhfkit.cli", "ppo", "--out", str(tmp_path / "run")] + (["--resume"] if resume else [])
        for a in (f"model.name_or_path={model}", f"data.prompts={prompts}", f"reward.source={__name__}:count_great",
                  "eval.text=null", f"train.max_steps={steps}", "train.batch_size=16", "train.micro_batch_size=4",
                  "log.progress=false", "rollout.max_new_tokens=6", "log.save_every=2", "ppo.kl_target=1.0"):
            cmd += ["--set", a]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert res.returncode == 0, res.stderr[-3000:]

    launch(3, resume=False)  # saves a checkpoint at step 2 from both processes
    assert (tmp_path / "run" / "checkpoints" / "step-2" / "rng-1.json").exists()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert (tmp_path / "run" / "final" / "critic" / "model.safetensors").exists()


def test_only_policy_and_critic_are_prepared_for_training(tmp_path, monkeypatch):
    """Placement: the policy and critic go through `accelerator.prepare` (DDP/FSDP-wrapped for
    training); the reference only through `prepare_model(evaluation_mode=True)`; the reward model
    never (it is only moved to the device, so it is never wrapped or sharded for training)."""
    from accelerate import Accelerator
    from test_ppo_distributed import _reward_model

    import rlhfkit.recipes.online as ppo

    model = build_tiny_model(tmp_path / "m")
    rm = _reward_model(model, tmp_path / "rm")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": d["prompt"]} for d in random_demos(16, 0)])
    train, evaluation, rewards = [], [], []
    prepare_model = Accelerator.prepare_model

    def spy(self, model, device_placement=None, evaluation_mode=False):  # prepare() calls it per model
        (evaluation if evaluation_mode else train).append(model)
        return prepare_model(self, model, device_placement=device_placement, evaluation_mode=evaluation_mode)

    build = ppo.build_reward
    monkeypatch.setattr(Accelerator, "prepare_model", spy)
    monkeypatch.setattr(ppo, "build_reward", lambda *a, **k: rewards.append(build(*a, **k)) or rewards[-1])
    run(_cfg(model, prompts, f"reward.source={rm}", "train.max_steps=1", "log.save_every=0"), tmp_path / "run")
    assert sorted(type(m).__name__ for m in train) == ["GPT2ForSequenceClassification", "GPT2LMHeadModel"]
    assert [type(m).__name__ for m in evaluation] == ["GPT2LMHeadModel"]  # the frozen reference
    rm_models = rewards[0].modules()
    assert rm_models and all(not any(m is r for m in train + evaluation) for r in rm_models)
    assert all(not p.requires_grad for r in rm_models for p in r.parameters())
