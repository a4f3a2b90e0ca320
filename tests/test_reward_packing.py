"""Reward training packs each micro-batch's responses into rows (models.packing), exactly, or pads.

Tolerance, the one `models.packing.reward_measure` states: r = w.h + b, h the final hidden state
(after the final norm) at the response's last token. Packed and padded passes run the same float32
maths in other reduction orders (wider rows, more masked keys, other GEMM blocking), so h may move
by rounding, and a move dh moves r by at most ||w|| ||dh|| (Cauchy-Schwarz); allowed per response
t = 2^10 u (||w|| ||h|| + |b|), u = 2^-24 (2^8 for sqrt(n) growth of reordered sums of up to
2^16 terms, 2^2 for the depth). Here ||w|| ~ 1 (head drawn from N(0, 1/(d+1))), ||h|| ~ sqrt(d):
t ~ 3e-4.
- a pair's Delta = r_w - r_l moves by at most t_w + t_l;
- the step loss: each pair's loss l(Delta - m) has |l'| <= 1 (Bradley-Terry: sigma(x) - p in
  (-1, 1); hinge: slope 0 or -1), so it moves by at most t_w + t_l; a prompt's loss is the mean
  over its pairs and the step's loss the sum over prompts / the prompt count, a weighted mean:
  at most 2 max t. Plus each side's own float32 rounding of that sum (P pair terms, M micro-batch
  sums, a few ops each: (P + M + 4) u |loss|, about 1e-6 here) counted for both sides.
A leak (the controls) moves some reward by far more than t.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import build_tiny_model, write_jsonl
from test_dpo_packing import ignore_masks
from test_reward_recipe import _cfg, comparisons
from transformers import AutoTokenizer

from rlhfkit.config import ModelConfig, load_config
from rlhfkit.data import read_records
from rlhfkit.losses.bradley_terry import kwise_loss
from rlhfkit.models import packing
from rlhfkit.models.reward import build_reward_model, forward_rewards
from rlhfkit.recipes import reward
from rlhfkit.train.batches import BatchPlan

U = 2.0**-24
CAPACITY = 64
CHUNK = 4  # comparisons per micro-batch


def _model(folder, arch):
    build_tiny_model(folder, arch)
    tok = AutoTokenizer.from_pretrained(folder)
    return tok, build_reward_model(ModelConfig(name_or_path=str(folder)), tok.pad_token_id, seed=0).eval()


def _feats(tok, path, max_length=128):
    cfg = load_config(reward.RewardConfig, None, [])
    return reward.comparison_features(tok, read_records(str(path), "comparison"), cfg, max_length)


def _chunks(feats):
    return [feats[i : i + CHUNK] for i in range(0, len(feats), CHUNK)]


def loss_rounding(loss: float, pairs: int, micro: int) -> float:
    """Both sides' own float32 rounding of a step loss (module docstring)."""
    return 2 * (pairs + micro + 4) * U * abs(loss)


@torch.no_grad()
def rewards_of(model, feats, capacity) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards (n,) of every response, CHUNK comparisons per pass, and the step loss over them all."""
    out, loss = [], 0.0
    for chunk in _chunks(feats):
        b = reward.collate_comparisons(chunk, 0, capacity)
        if capacity is not None:
            assert b["input_ids"].shape[0] < b["n"]  # responses do share rows
        r = packing.sequence_rewards(model, b)
        loss += kwise_loss(r, b["winners"], b["losers"], b["groups"], b["targets"], b["margins"], 0.0, len(feats))[0]
        out.append(r)
    return torch.cat(out), loss


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("cmp") / "c.jsonl", comparisons(12, 3, 0))


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
def test_packed_and_padded_rewards_pairs_and_step_loss_agree(tmp_path, data_file, arch):
    """Packed rows vs one padded row per response, both vs each response alone (no neighbours,
    no padding): every reward within its t, every pair's Delta within t_w + t_l, the step loss
    (4 micro-batches of 4 prompts x 3 pairs) within 2 max t + rounding. Control: packed rows under
    plain causal attention (mask ignored) move some reward by more than t."""
    tok, model = _model(tmp_path / arch, arch)
    feats = _feats(tok, data_file)
    assert packing.packing_problem(model, CAPACITY) is None
    flat = [row for f in feats for row in f["rows"]]
    with torch.no_grad():
        alone = torch.cat([forward_rewards(model, torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long))
                           for row in flat])
        tol = torch.cat([packing.reward_measure(model, reward.collate_comparisons(c, 0, None))[1] for c in _chunks(feats)])
    packed, loss_packed = rewards_of(model, feats, CAPACITY)
    padded, loss_padded = rewards_of(model, feats, None)
    assert (tol > 0).all() and tol.max() < 1e-3
    assert ((packed - alone).abs() <= tol).all()
    assert ((padded - alone).abs() <= tol).all()
    assert ((packed - padded).abs() <= tol).all()
    b = reward.collate_comparisons(feats, 0, None)
    w, lo = b["winners"], b["losers"]
    assert (((packed[w] - packed[lo]) - (padded[w] - padded[lo])).abs() <= tol[w] + tol[lo]).all()
    bound = 2 * tol.max().item() + loss_rounding(loss_padded.item(), len(w), len(_chunks(feats)))
    assert abs(loss_packed.item() - loss_padded.item()) <= bound
    model.forward = ignore_masks(model.forward)
    leaked, _ = rewards_of(model, feats, CAPACITY)
    assert ((leaked - alone).abs() > tol).any()  # control
    del model.forward
    assert packing.check_packing(model, feats, lambda c, capacity: reward.collate_comparisons(c, 0, capacity), CAPACITY,
                                 CHUNK, packing.reward_measure) is None


def test_padded_micro_batches_are_cut_from_the_shard_sorted_by_length():
    """Padded rows pad to a micro-batch's longest response: sorted, each micro-batch holds similar
    lengths. Packed rows keep BatchPlan's order (little padding in any order)."""
    rng = random.Random(0)
    feats = [{"rows": [[1] * rng.randint(2, 60) for _ in range(3)]} for _ in range(16)]
    plan = BatchPlan(len(feats), 16, 4, 1)
    mine = plan.global_batch(0, 0)
    longest = [max(len(r) for r in feats[i]["rows"]) for i in range(len(feats))]
    padded = reward.micro_batches(plan, mine, feats, packed=False)
    assert sorted(i for m in padded for i in m) == sorted(mine) and [len(m) for m in padded] == [4] * 4
    assert [longest[i] for m in padded for i in m] == sorted(longest[i] for i in mine)
    assert reward.micro_batches(plan, mine, feats, packed=True) == list(plan.micro_batches(mine))


# ----------------------------------------------------------------------------- the recipe


def _first_step(tmp_path, name, model_dir, train, held, monkeypatch, *sets) -> tuple[dict, list]:
    """The first step's metrics and the capacities collate_comparisons was called with, in order:
    the packing check's (packed, padded) per chunk of 4 comparisons, then the step's 2 micro-batches."""
    seen, real = [], reward.collate_comparisons

    def spy(feats, pad_token_id, capacity=None):
        seen.append(capacity)
        return real(feats, pad_token_id, capacity)

    monkeypatch.setattr(reward, "collate_comparisons", spy)
    cfg = _cfg(model_dir, train, held, "train.max_steps=1", "normalize.source=none", "log.save_every=0", *sets)
    reward.run(cfg, tmp_path / name)
    monkeypatch.setattr(reward, "collate_comparisons", real)
    return json.loads((tmp_path / name / "metrics.jsonl").read_text().split("\n")[0]), seen


def _step_bound(model_dir, train, loss: float) -> float:
    """2 max t over every training response under the initial model (the step's responses are
    among them) + rounding: 8 prompts x 3 pairs in 2 micro-batches (module docstring)."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = build_reward_model(ModelConfig(name_or_path=str(model_dir)), tok.pad_token_id, seed=0).eval()
    feats = _feats(tok, train)
    with torch.no_grad():
        t = max(packing.reward_measure(model, reward.collate_comparisons(c, tok.pad_token_id, None))[1].max().item()
                for c in _chunks(feats))
    return 2 * t + loss_rounding(loss, 8 * 3, 2)


@pytest.fixture
def data(tmp_path):
    return (write_jsonl(tmp_path / "train.jsonl", comparisons(32, 3, 0)),
            write_jsonl(tmp_path / "eval.jsonl", comparisons(8, 3, 1)))


def test_reward_packs_by_default_with_the_padded_first_step(tmp_path, data, capsys, monkeypatch):
    """data.packing defaults to on: the training passes get packed rows (capacity max_length = 128)
    and no 'packing off' line; with data.packing=false only padded rows. Same first-step loss,
    accuracy and reward mean to the derived bound (the same weights, other layouts)."""
    model_dir = build_tiny_model(tmp_path / "m")
    on, caps_on = _first_step(tmp_path, "on", model_dir, *data, monkeypatch)
    assert "packing off" not in capsys.readouterr().out
    off, caps_off = _first_step(tmp_path, "off", model_dir, *data, monkeypatch, "data.packing=false")
    assert caps_on == [128, None] * 4 + [128, 128]  # the check compares both layouts, then training packs
    assert caps_off == [None, None]
    bound = _step_bound(model_dir, data[0], off["loss/reward"])
    assert abs(on["loss/reward"] - off["loss/reward"]) <= bound, (on["loss/reward"], off["loss/reward"], bound)
    assert abs(on["reward/mean"] - off["reward/mean"]) <= bound / 2  # a mean of rewards: within max t


def test_a_model_that_leaks_falls_back_to_padded_rows_in_one_line(tmp_path, data, capsys, monkeypatch):
    """A reward model that attends across packed sequences although its architecture says it would
    not: the check catches it, one printed line says so, and the run trains on padded rows (right
    padding: plain causal attention is still right there), with data.packing=false's first step."""
    model_dir = build_tiny_model(tmp_path / "m")
    off, _ = _first_step(tmp_path, "off", model_dir, *data, monkeypatch, "data.packing=false")
    real = reward.build_reward_model

    def leaky(*a, **k):
        model = real(*a, **k)
        model.forward = ignore_masks(model.forward)
        return model

    monkeypatch.setattr(reward, "build_reward_model", leaky)
    capsys.readouterr()
    on, caps = _first_step(tmp_path, "on", model_dir, *data, monkeypatch)
    lines = [x for x in capsys.readouterr().out.split("\n") if "packing off" in x]
    assert len(lines) == 1 and lines[0].startswith("[reward] packing off:") and "leaks between packed sequences" in lines[0]
    assert caps[-2:] == [None, None] and 128 in caps  # checked packed vs padded, then trained padded
    bound = _step_bound(model_dir, data[0], off["loss/reward"])
    assert abs(on["loss/reward"] - off["loss/reward"]) <= bound
