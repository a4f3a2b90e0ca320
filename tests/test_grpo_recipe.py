"""The critic-free online loop (`rlhfkit grpo` / `rloo`) on tiny models: resume == uninterrupted,
each option reaching the loss (aggregation, one on-policy update, drop_uniform_groups, clip-higher),
truncated importance sampling against a sampler with perturbed log-probs, and LoRA with the
reference = the policy's adapters off.

The loss checks capture the step's `Experience` (advantages, loss mask, importance weights) by
wrapping `make_experience`, and recompute the logged first-step loss from it by hand: with one
update on the rollout just sampled (ppo_epochs 1, one minibatch) the ratio is 1, nothing clips, and
the surrogate is -sum(A * w * mask) / normaliser exactly (losses.ppo.policy_loss). The logged value
is a float32 sum over micro-batches of float32 sums; against the float64 recomputation that is a
relative error of at most (tokens + micro-batches) * 2^-24 < 1e-5 for these sizes (<= 64 rows x 6
tokens), so the comparisons use rel 1e-5 plus abs 1e-7 for values that are exactly 0 by algebra.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model, crash_at_save, random_demos, write_jsonl
from safetensors.torch import load_file

import rlhfkit.recipes.online as online
from rlhfkit.config import load_config
from rlhfkit.recipes.grpo import GRPOConfig
from rlhfkit.recipes.grpo import run as run_grpo
from rlhfkit.rollout import HFBackend

TOKENS = 6  # rollout.max_new_tokens in every test here


def char_count(prompts, responses):
    """A reward that rarely ties within a group (characters of the response)."""
    return [float(len(r)) for r in responses]


def by_kind(prompts, responses, kind):
    """0 for every response to a 'flat' prompt (a uniform group: no signal); characters otherwise."""
    return [0.0 if k == "flat" else float(len(r)) for r, k in zip(responses, kind, strict=True)]


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().split("\n") if x]


def _prompts(tmp_path: Path, n: int = 32, **columns) -> Path:
    rows = [{"prompt": d["prompt"], **{k: v[i % len(v)] for k, v in columns.items()}}
            for i, d in enumerate(random_demos(n, 0))]
    return write_jsonl(tmp_path / "p.jsonl", rows)


def _cfg(model, prompts, *overrides):
    return load_config(GRPOConfig, None, [
        f"model.name_or_path={model}", f"data.prompts={prompts}", f"reward.source={__name__}:char_count",
        "eval.text=null", "eval.gold=none", "log.progress=false", "log.save_every=0", "train.batch_size=16",
        "train.micro_batch_size=8", "rollout.group_size=4", f"rollout.max_new_tokens={TOKENS}", "train.lr=1e-2",
        *overrides])


@pytest.fixture
def captured(monkeypatch) -> list:
    """Every step's Experience, in order."""
    seen = []
    make = online.make_experience

    def spy(*a, **k):
        seen.append(make(*a, **k))
        return seen[-1]

    monkeypatch.setattr(online, "make_experience", spy)
    return seen


def _policy_loss_by_hand(exp, mode: str, weights: torch.Tensor | None = None) -> float:
    """-sum(A * w) over the loss mask, reduced as losses.reduce.aggregate with the global count."""
    A, m = exp.advantages.double(), exp.loss_mask.double()
    per_token = -A * m * (weights.double() if weights is not None else 1.0)
    rows = (m.sum(1) > 0).sum().item()
    if mode == "token_mean":
        return (per_token.sum() / m.sum()).item()
    if mode == "seq_mean":
        return ((per_token.sum(1) / m.sum(1).clamp(min=1)).sum() / rows).item()
    return (per_token.sum() / (rows * TOKENS)).item()  # constant: responses x max_new_tokens


# ----------------------------------------------------------------------------- resume


def test_interrupted_and_resumed_grpo_ends_with_the_same_weights(tmp_path):
    """4 steps straight vs a crash right after checkpoint step-2 is written + `resume`: same final
    weights (bit-for-bit replay on one machine: atol 1e-6 leaves room only for nothing) and the
    same logged rows; clip-higher, two epochs x two minibatches and a linear schedule so the resumed
    optimizer, scheduler and minibatch order all matter."""
    model = build_tiny_model(tmp_path / "m")
    cfg = _cfg(model, _prompts(tmp_path), "train.max_steps=4", "log.save_every=2", "algo.ppo_epochs=2",
               "algo.num_minibatches=2", "algo.clip_eps_high=0.28", "train.lr=3e-3", "train.schedule=linear")
    a, b = tmp_path / "a", tmp_path / "b"
    run_grpo(cfg, a)
    with crash_at_save(2):
        run_grpo(cfg, b)
    assert not (b / "final").exists() and [p.name for p in (b / "checkpoints").iterdir()] == ["step-2"]
    run_grpo(cfg, b, resume=True)
    wa, wb = load_file(str(a / "final" / "model.safetensors")), load_file(str(b / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6, msg=k)
    ra, rb = _rows(a), _rows(b)
    assert [r["step"] for r in rb] == [1, 2, 3, 4]
    for x, y in zip(ra, rb, strict=True):
        for k in ("reward/mean", "kl/mean", "loss/policy", "loss/kl", "policy/clipfrac"):
            assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-7), k
    assert ra[-1]["kl/mean"] != 0  # it trained


# ----------------------------------------------------------------------------- options reach the loss


@pytest.mark.parametrize("estimator, aggregation, mode", [
    ("grpo", "token_mean", "token_mean"), ("grpo", "seq_mean", "seq_mean"), ("grpo", "constant", "constant"),
    ("dr_grpo", "auto", "constant")])
def test_one_on_policy_update_loss_by_hand(tmp_path, captured, estimator, aggregation, mode):
    """ppo_epochs 1, one minibatch: ratio 1 (approx_kl ~ 0, nothing clipped) and loss/policy is the
    hand-reduced -sum(A) of the chosen aggregation (dr_grpo's auto = constant). With GRPO's
    group-centred advantages, seq_mean is -mean_i A_i = 0 by algebra, the other two are not."""
    model = build_tiny_model(tmp_path / "m")
    run_grpo(_cfg(model, _prompts(tmp_path), "train.max_steps=1", f"algo.estimator={estimator}",
                  f"algo.loss_aggregation={aggregation}", "train.batch_size=32"), tmp_path / "run")
    row, exp = _rows(tmp_path / "run")[0], captured[0]
    assert row["policy/clipfrac"] == 0 and abs(row["policy/approx_kl"]) < 1e-10
    expected = _policy_loss_by_hand(exp, mode)
    assert row["loss/policy"] == pytest.approx(expected, rel=1e-5, abs=1e-7)
    others = {m: _policy_loss_by_hand(exp, m) for m in ("token_mean", "seq_mean", "constant") if m != mode}
    assert all(abs(v - expected) > 1e-4 for v in others.values()), (mode, expected, others)  # distinguishable


def test_drop_uniform_groups_leaves_them_out_of_the_loss_and_logs_the_share(tmp_path, captured):
    """Half the prompts get a constant reward (missing-EOS penalty off, so their groups are exactly
    uniform): groups/dropped = the share of uniform groups in the step's scores, those rows are out of the
    loss mask, and the token_mean normaliser counts only the kept tokens."""
    model = build_tiny_model(tmp_path / "m")
    prompts = _prompts(tmp_path, kind=["flat", "live"])
    run_grpo(_cfg(model, prompts, f"reward.source={__name__}:by_kind", "reward.missing_eos_penalty=0",
                  "algo.drop_uniform_groups=true", "train.max_steps=1", "train.batch_size=32"), tmp_path / "run")
    row, exp = _rows(tmp_path / "run")[0], captured[0]
    groups = exp.scores.view(-1, 4)
    uniform = (groups == groups[:, :1]).all(1)
    assert uniform.any() and not uniform.all()  # the flat prompts' groups, not the others
    assert row["groups/dropped"] == pytest.approx(uniform.float().mean().item())
    kept = exp.loss_mask.view(-1, 4, exp.loss_mask.shape[1]).sum((1, 2)) > 0
    assert (kept == ~uniform).all()
    expected = _policy_loss_by_hand(exp, "token_mean")
    assert row["loss/policy"] == pytest.approx(expected, rel=1e-5)
    undropped = -(exp.advantages * exp.roll.response_mask).sum().item() / exp.roll.response_mask.sum().item()
    assert abs(undropped - expected) > 1e-4  # the normaliser shrank


def test_clip_higher_reaches_the_loss(tmp_path):
    """Two epochs on one rollout: the first update is identical in both runs (ratio 1), so the second
    epoch sees the same ratios; clip_eps 0.05 clips many of them, and an upper range of 10 releases
    every A > 0 token with ratio above 1.05, so policy/clipfrac must drop and nothing else differs
    in the rollout."""
    model = build_tiny_model(tmp_path / "m")
    prompts = _prompts(tmp_path)
    common = ["train.max_steps=1", "algo.ppo_epochs=2", "algo.clip_eps=0.05", "train.lr=3e-2"]
    run_grpo(_cfg(model, prompts, *common), tmp_path / "sym")
    run_grpo(_cfg(model, prompts, *common, "algo.clip_eps_high=10"), tmp_path / "high")
    sym, high = _rows(tmp_path / "sym")[0], _rows(tmp_path / "high")[0]
    assert sym["reward/mean"] == high["reward/mean"] and sym["kl/mean"] == high["kl/mean"]
    assert sym["policy/clipfrac"] > 0.05
    assert high["policy/clipfrac"] < sym["policy/clipfrac"], (sym["policy/clipfrac"], high["policy/clipfrac"])


# ----------------------------------------------------------------------------- truncated importance sampling

PERTURB = (0.1, 1.0)  # subtracted from the true log-prob at even / odd response positions
CAP = 2.0  # w = min(exp(delta), cap): exp(0.1) = 1.105 at even positions, min(e, 2) = 2 at odd ones


class PerturbedSampler(HFBackend):
    """The HF backend that also reports the sampled tokens' log-probs, as vLLM does, but off by a
    known amount: the model's own log-prob (temperature 1, prompt + response alone, no padding)
    minus PERTURB[t % 2]. `missing`: leave one sample's log-probs out."""

    missing = False

    @torch.no_grad()
    def generate(self, prompt_ids, params, batch_size=64, seed=None):
        samples = super().generate(prompt_ids, params, batch_size, seed)
        was_training = self.model.training
        self.model.eval()
        for smp in samples:
            ids = torch.tensor([smp.prompt_ids + smp.response_ids])
            logits = self.model(input_ids=ids).logits[0, len(smp.prompt_ids) - 1 : -1].float() / params.temperature
            lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(smp.response_ids)[:, None])[:, 0]
            smp.logprobs = [v - PERTURB[t % 2] for t, v in enumerate(lp.tolist())]
        self.model.train(was_training)
        if self.missing:
            samples[0].logprobs = None
        return samples


@pytest.mark.parametrize("case", ["capped", "off", "missing"])
def test_truncated_importance_weights_by_hand(tmp_path, captured, monkeypatch, case):
    """A sampler whose log-probs are the trainer's minus 0.1 / 1.0: with rollout.is_cap 2 every
    response token's weight is min(exp(old_logps - sampler_logps), 2) = 1.105 or 2 (the trainer
    recomputes old_logps in a padded batch: equal to the sampler's unpadded pass within float32
    noise, 1e-5 on the weight), the logged loss is -sum(A * w) / tokens, policy/is_weight their
    mean. Off (None, nothing logged) with is_cap 0 or when any sample lacks log-probs."""
    PerturbedSampler.missing = case == "missing"
    monkeypatch.setattr(online, "make_backend", lambda name, model, tok, **o: PerturbedSampler(model, tok))
    model = build_tiny_model(tmp_path / "m")
    cap = 0.0 if case == "off" else CAP
    # Seed 1 draws responses of several lengths: with equal lengths every row's sum of weights is the
    # same and -sum(A * w) is 0 by algebra (group-centred A), leaving nothing to compare.
    run_grpo(_cfg(model, _prompts(tmp_path), "train.max_steps=1", f"rollout.is_cap={cap}", "train.seed=1"),
             tmp_path / "run")
    row, exp = _rows(tmp_path / "run")[0], captured[0]
    if case != "capped":
        assert exp.is_weights is None and "policy/is_weight" not in row
        assert row["loss/policy"] == pytest.approx(_policy_loss_by_hand(exp, "token_mean"), rel=1e-5, abs=1e-7)
        return
    m = exp.roll.response_mask
    assert m.sum(1).unique().numel() > 1  # lengths vary (see above)
    t = torch.arange(m.shape[1]).expand_as(m)
    expected = torch.where(t % 2 == 0, torch.tensor(PERTURB[0]).exp(), torch.tensor(CAP)) * m
    torch.testing.assert_close(exp.is_weights, expected, rtol=0, atol=1e-5)
    assert row["policy/is_weight"] == pytest.approx((exp.is_weights * m).sum().item() / m.sum().item(), rel=1e-6)
    with_w = _policy_loss_by_hand(exp, "token_mean", exp.is_weights)
    assert row["loss/policy"] == pytest.approx(with_w, rel=1e-5)
    assert abs(with_w - _policy_loss_by_hand(exp, "token_mean")) > 1e-4  # the weights changed it


# ----------------------------------------------------------------------------- LoRA


def test_lora_grpo_reference_is_the_base_with_adapters_off(tmp_path, captured):
    """With LoRA and no ref_model the reference is the policy with its adapters disabled: step 1's
    KL is 0 (adapters B = 0; peft's Conv1D path rounds differently from the plain layer, 1e-5), and
    after three updates the reference log-probs on the last rollout are still the plain base
    model's (1e-5) while the policy's have moved away from them; final/ is the merged model."""
    from transformers import AutoModelForCausalLM

    from rlhfkit.experience import forward_window, response_labels, response_logits
    from rlhfkit.losses.logprobs import token_logps
    from rlhfkit.models.loading import AdapterDisabled

    model = build_tiny_model(tmp_path / "m")
    cfg = _cfg(model, _prompts(tmp_path), "train.max_steps=4", "model.lora.enabled=true", "model.lora.r=4",
               "model.lora.alpha=8", "train.lr=3e-2")
    _, ref, _ = online.load_models(cfg)
    assert isinstance(ref, AdapterDisabled)
    final = run_grpo(cfg, tmp_path / "run")
    rows = _rows(tmp_path / "run")
    assert abs(rows[0]["kl/mean"]) < 1e-5 and abs(rows[0]["loss/kl"]) < 1e-5
    assert max(abs(r["kl/mean"]) for r in rows[1:]) > 1e-3
    exp = captured[-1]
    base = AutoModelForCausalLM.from_pretrained(model).eval()
    rows_ = torch.arange(exp.roll.size)
    inputs, r = forward_window(exp.roll, rows_)
    with torch.no_grad():
        base_logps = token_logps(response_logits(base, inputs, r, 1.0), response_labels(exp.roll, rows_, r))
    m = exp.roll.response_mask[:, :r]
    torch.testing.assert_close(exp.ref_logps[:, :r] * m, base_logps * m, rtol=0, atol=1e-5)
    assert ((exp.old_logps[:, :r] - base_logps) * m).abs().max() > 1e-3
    assert (Path(final) / "adapter" / "adapter_model.safetensors").exists()
    merged = AutoModelForCausalLM.from_pretrained(final)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert (merged(input_ids=ids).logits - base(input_ids=ids).logits).abs().max() > 1e-4
