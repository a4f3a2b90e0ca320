"""DPO recipe on tiny models: pairs, one-pass batching, reference cache, log 2 start, resume."""

from __future__ import annotations

import functools
import json
import math
import random

import pytest
import torch
from conftest import WORDS, build_tiny_model, crash_at_save, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhfkit.config import load_config
from rlhfkit.data import read_records
from rlhfkit.evaluate import sequence_kl
from rlhfkit.losses.dpo import preference_loss
from rlhfkit.losses.logprobs import token_logps
from rlhfkit.models import packing
from rlhfkit.recipes import dpo

GOOD, BAD = {"great", "good", "fun", "loved", "liked"}, {"bad", "dull", "hated", "long"}


def random_comparisons(n: int, k: int = 3, seed: int = 0) -> list[dict]:
    """K responses per prompt, ranked by (#good words - #bad words), ties broken at random:
    a preference a tiny model can learn."""
    rng = random.Random(seed)
    content = [w for w in WORDS if w not in ".!,"]
    rows = []
    for _ in range(n):
        prompt = " ".join(rng.choice(content) for _ in range(rng.randint(1, 4)))
        responses = [" ".join(rng.choice(content) for _ in range(rng.randint(1, 6))) + " ." for _ in range(k)]
        score = [sum((w in GOOD) - (w in BAD) for w in r.split()) + rng.random() * 0.1 for r in responses]
        rows.append({"prompt": prompt, "responses": responses, "ranking": sorted(range(k), key=lambda i: -score[i])})
    return rows


@pytest.fixture
def comparisons(tmp_path):
    return (write_jsonl(tmp_path / "train.jsonl", random_comparisons(32, seed=0)),
            write_jsonl(tmp_path / "eval.jsonl", random_comparisons(8, seed=1)))


def _cfg(model, train, eval_=None, *extra):
    return load_config(dpo.DPOConfig, None, [
        f"model.name_or_path={model}", f"data.train={train}", f"data.eval={eval_ or 'null'}", "sampling.prompts=null",
        "sampling.text=null", "train.batch_size=8", "train.micro_batch_size=4", "train.lr=1e-2", "train.max_steps=6",
        "train.warmup_ratio=0", "train.schedule=constant", "log.save_every=3", "log.eval_every=3", "log.progress=false",
        *extra])


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_pairs_all_vs_best_vs_worst(comparisons):
    records = read_records(comparisons[0], "comparison")
    assert len(dpo.comparison_pairs(records, "all")) == 32 * 3  # C(3, 2) per prompt
    bvw = dpo.comparison_pairs(records, "best_vs_worst")
    assert [(w, lo) for r, w, lo in bvw] == [(r.ranking[0], r.ranking[-1]) for r in records]


def test_encode_pair_truncates_prompt_from_the_left_then_responses(tiny_model):
    """Prompt of 6 word tokens, chosen 3 + EOS, rejected 1 + EOS, max_length 8 with min_prompt 2:
    the prompt keeps its last 8 - 4 = 4 tokens; both responses fit untouched."""
    tok = AutoTokenizer.from_pretrained(tiny_model)
    rec = read_records([{"prompt": "the a movie film plot acting", "chosen": "great fun movie", "rejected": "bad"}], "comparison")[0]
    p = dpo.encode_pair(tok, rec, "great fun movie", "bad", max_length=8, min_prompt=2)
    eos = tok.eos_token_id
    assert tok.decode(p["prompt"]) == "film plot acting" or len(p["prompt"]) == 4
    assert p["prompt"] == tok("movie film plot acting")["input_ids"]
    assert p["chosen"][-1] == eos and len(p["chosen"]) == 4 and p["rejected"] == tok("bad")["input_ids"] + [eos]
    assert p["truncated"]
    # min_prompt wins over the responses: they are cut from the right (losing EOS).
    q = dpo.encode_pair(tok, rec, "great fun movie", "bad", max_length=5, min_prompt=3)
    assert len(q["prompt"]) == 3 and len(q["chosen"]) == 2 and eos not in q["chosen"]


def test_pairs_of_identical_responses_are_dropped(tmp_path, tiny_model):
    """K=3 with responses 0 and 2 identical: of the 3 implied pairs, the (0, 2) pair is dropped."""
    tok = AutoTokenizer.from_pretrained(tiny_model)
    src = write_jsonl(tmp_path / "dup.jsonl", [{"prompt": "the movie", "responses": ["great .", "bad .", "great ."],
                                                "ranking": [0, 2, 1]}])
    pairs = dpo.encode_pairs(tok, src, "all", 32)
    assert len(pairs) == 2 and all(p["chosen"] != p["rejected"] for p in pairs)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
@pytest.mark.parametrize("capacity", [None, 16, 64])
def test_one_packed_pass_matches_separate_passes(tmp_path, comparisons, arch, capacity):
    """sequence_logps over packed rows (position restarts, block mask) or padded rows gives the same
    sequence log-probs as the plain computation on each prompt+response alone (all seven
    architectures, the check and the fallback: test_dpo_packing.py)."""
    model_dir = build_tiny_model(tmp_path / arch, arch)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    pairs = dpo.encode_pairs(tok, comparisons[0], "all", 64)[:6]
    batch = dpo.pack_pairs(pairs, tok.pad_token_id, capacity)
    if capacity == 16:
        assert batch["input_ids"].shape[0] < 12  # several sequences share a row
    with torch.no_grad():
        logps, lengths = packing.sequence_logps(model, batch)
        expected = []
        for side in ("chosen", "rejected"):
            for p in pairs:
                ids = torch.tensor([p["prompt"] + p[side]])
                labels = torch.tensor([[-100] * len(p["prompt"]) + p[side]])
                expected.append(token_logps(model(input_ids=ids).logits[:, :-1], labels[:, 1:]).sum())
    torch.testing.assert_close(logps, torch.stack(expected), rtol=0, atol=1e-5)
    assert lengths.tolist() == [len(p[s]) for s in ("chosen", "rejected") for p in pairs]
    assert packing.check_packing(model, pairs, functools.partial(dpo.pack_pairs, pad_token_id=tok.pad_token_id), 64) is None  # the model keeps them apart


def test_dpo_with_large_beta_and_identical_reference_starts_at_log2(tmp_path, comparisons, tiny_model):
    """Policy = reference at step 0, so every log-ratio is 0 and -log sigma(beta * 0) = log 2.
    With beta = 1000 any mismatch between the cached reference pass and the training pass
    (dropout, padding, positions, batching) would be amplified a thousandfold; it is not."""
    out = dpo.run(_cfg(tiny_model, comparisons[0], None, "beta=1000", "train.max_steps=1", "log.eval_every=0"), tmp_path / "run")
    first = _rows(tmp_path / "run")[0]
    assert first["loss/dpo"] == pytest.approx(math.log(2), abs=1e-3)
    assert first["rewards/margin"] == pytest.approx(0.0, abs=2e-3)
    assert (tmp_path / "run" / "ref_logps.safetensors").exists() and (out / "model.safetensors").exists()


def test_dpo_learns_the_preference_and_logs_metrics(tmp_path, comparisons, tiny_model):
    dpo.run(_cfg(tiny_model, *comparisons, "beta=0.5", "train.lr=3e-3", "train.max_steps=24", "log.eval_every=12"),
            tmp_path / "run")
    rows = _rows(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 25))
    for key in ("loss/dpo", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "logps/chosen"):
        assert key in rows[0]
    assert rows[0]["loss/dpo"] == pytest.approx(math.log(2), abs=1e-4)
    last = rows[-6:]  # second epoch: the same pairs again, now mostly learned
    assert sum(r["loss/dpo"] for r in last) / 6 < 0.75 * math.log(2)
    assert sum(r["rewards/accuracy"] for r in last) / 6 > 0.75
    assert sum(r["rewards/margin"] for r in last) / 6 > 0.3
    assert {"eval/loss", "eval/accuracy", "eval/margin"} <= set(rows[11]) and "eval/loss" in rows[23]
    done = json.loads((tmp_path / "run" / "final" / "run_complete.json").read_text())
    assert done["steps"] == 24 and "eval/accuracy" in done


@pytest.mark.parametrize("loss_type", ["ipo", "cdpo", "hinge", "simpo"])
def test_every_loss_type_trains(tmp_path, comparisons, tiny_model, loss_type):
    extra = {"ipo": ["beta=0.5"], "cdpo": ["label_smoothing=0.1"], "hinge": ["beta=0.5"], "simpo": ["beta=2.0", "simpo_gamma=0.5"]}[loss_type]
    dpo.run(_cfg(tiny_model, comparisons[0], None, f"loss_type={loss_type}", "train.max_steps=10", *extra), tmp_path / "run")
    rows = _rows(tmp_path / "run")
    assert rows[-1]["loss/dpo"] < rows[0]["loss/dpo"]
    assert rows[-1]["rewards/accuracy"] > 0.6
    # SimPO never looks at a reference: no reference pass, no cache.
    assert (tmp_path / "run" / "ref_logps.safetensors").exists() == (loss_type != "simpo")


def test_reference_cache_is_reused_and_invalidated(tmp_path, comparisons, tiny_model, monkeypatch):
    cfg = _cfg(tiny_model, comparisons[0], None, "train.max_steps=1", "log.eval_every=0")
    dpo.run(cfg, tmp_path / "run")
    calls = []
    original = dpo.reference_logps
    monkeypatch.setattr(dpo, "reference_logps", lambda *a, **k: calls.append(1) or original(*a, **k))
    dpo.run(cfg, tmp_path / "run")
    assert calls == []  # same reference, same pairs: read from the run folder
    dpo.run(_cfg(tiny_model, comparisons[0], None, "train.max_steps=1", "log.eval_every=0", "data.pairs=best_vs_worst"),
            tmp_path / "run")
    assert calls == [1]  # different pairs: recomputed


def test_resume_matches_uninterrupted_run(tmp_path, comparisons, tiny_model):
    full = dpo.run(_cfg(tiny_model, *comparisons), tmp_path / "full")
    with crash_at_save(3):
        dpo.run(_cfg(tiny_model, *comparisons), tmp_path / "cut")
    resumed = dpo.run(_cfg(tiny_model, *comparisons), tmp_path / "cut", resume=True)
    a = AutoModelForCausalLM.from_pretrained(full).state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    ra, rb = _rows(tmp_path / "full"), _rows(tmp_path / "cut")
    assert [r["step"] for r in rb] == list(range(1, 7))
    assert [r["loss/dpo"] for r in ra] == pytest.approx([r["loss/dpo"] for r in rb], abs=1e-6)


def test_sampling_eval_logs_kl_and_perplexity(tmp_path, comparisons, tiny_model):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["prompt"]} for r in random_comparisons(6, seed=3)])
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "the movie was great ."}, {"text": "i hated the plot ."}])
    cfg = _cfg(tiny_model, comparisons[0], None, f"sampling.prompts={prompts}", f"sampling.text={text}", "sampling.gold=false",
               "sampling.max_new_tokens=8", "train.max_steps=4", "log.eval_every=2")
    dpo.run(cfg, tmp_path / "run")
    rows = _rows(tmp_path / "run")
    assert {"kl/mean", "eval/perplexity", "response/length"} <= set(rows[1])
    assert rows[3]["kl/mean"] > 0.05  # a lr=1e-2 policy has moved away from its reference


def test_sequence_kl_of_a_model_with_itself_is_zero(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert sequence_kl(model, model, [[5, 6], [7]], [[8, 9, 1], [10, 1]]) == 0.0


def test_bad_config_is_rejected(tmp_path, comparisons, tiny_model):
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo.run(_cfg(tiny_model, comparisons[0], None, "loss_type=cdpo", "label_smoothing=0.7"), tmp_path / "run")


def test_micro_batching_does_not_change_the_loss(tmp_path, comparisons, tiny_model):
    """Global batch of 8 pairs as 1 x 8 or 4 x 2 micro-batches: same losses (global-count normaliser)."""
    dpo.run(_cfg(tiny_model, comparisons[0], None, "train.micro_batch_size=8", "train.max_steps=3", "log.eval_every=0",
                 "log.save_every=0"), tmp_path / "a")
    dpo.run(_cfg(tiny_model, comparisons[0], None, "train.micro_batch_size=2", "train.max_steps=3", "log.eval_every=0",
                 "log.save_every=0"), tmp_path / "b")
    la, lb = [r["loss/dpo"] for r in _rows(tmp_path / "a")], [r["loss/dpo"] for r in _rows(tmp_path / "b")]
    assert la == pytest.approx(lb, abs=1e-5)
    assert preference_loss  # imported for symmetry with the loss tests
