"""KTO recipe on tiny models: mismatched pairs, the first step by hand, a logged step recomputed
from plain forward passes, reference cache, class balance, comparisons as input, LoRA, resume."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from conftest import WORDS, build_tiny_model, crash_at_save, write_jsonl
from test_dpo_recipe import BAD, GOOD, random_comparisons
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhfkit.config import ConfigError, load_config
from rlhfkit.losses.logprobs import token_logps
from rlhfkit.recipes import kto
from rlhfkit.train.batches import BatchPlan


def random_feedback(n: int, seed: int = 0, up_share: float | None = None) -> list[dict]:
    """One response per prompt, thumbs up when it has more good than bad words (ties: a coin), or,
    with `up_share`, up for exactly that share of the rows (the first ones)."""
    rng = random.Random(seed)
    content = [w for w in WORDS if w not in ".!,"]
    rows = []
    for i in range(n):
        prompt = " ".join(rng.choice(content) for _ in range(rng.randint(1, 4)))
        completion = " ".join(rng.choice(content) for _ in range(rng.randint(1, 6))) + " ."
        score = sum((w in GOOD) - (w in BAD) for w in completion.split()) + rng.random() - 0.5
        label = i < round(n * up_share) if up_share is not None else score > 0
        rows.append({"prompt": prompt, "completion": completion, "label": label})
    return rows


@pytest.fixture
def feedback(tmp_path):
    return (write_jsonl(tmp_path / "train.jsonl", random_feedback(48, seed=0)),
            write_jsonl(tmp_path / "eval.jsonl", random_feedback(12, seed=1)))


def _cfg(model, train, eval_=None, *extra):
    return load_config(kto.KTOConfig, None, [
        f"model.name_or_path={model}", f"data.train={train}", f"data.eval={eval_ or 'null'}", "sampling.prompts=null",
        "sampling.text=null", "train.batch_size=8", "train.micro_batch_size=4", "train.lr=1e-2", "train.max_steps=6",
        "train.warmup_ratio=0", "train.schedule=constant", "log.save_every=3", "log.eval_every=3", "log.progress=false",
        "beta=0.5", *extra])


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_mismatched_pairs_rotate_by_one_within_the_batch_skipping_the_same_prompt():
    """Batch [4, 7, 2, 9] (prompts a, b, b, c): TRL's rotation gives each example the previous
    one's completion, cyclically: 4 <- 9, 7 <- 4, 2 <- 7, 9 <- 2. Example 2 shares its prompt with
    7, so it takes the one before that (4). A batch of one prompt pairs with the previous example."""
    prompts = {4: [1], 7: [2], 2: [2], 9: [3]}
    examples = [{"prompt": prompts.get(i, [0])} for i in range(10)]
    assert kto.mismatched(examples, [4, 7, 2, 9]) == [9, 4, 4, 2]
    same = [{"prompt": [5]}] * 3
    assert kto.mismatched(same, [0, 1, 2]) == [2, 0, 1]


def test_items_pair_each_prompt_with_its_mismatched_completion_cut_to_max_length():
    examples = [{"prompt": [1, 2, 3], "completion": [10, 11], "desirable": True},
                {"prompt": [4], "completion": [12, 13, 14, 15], "desirable": False}]
    items = kto.kto_items(examples, [0, 1], max_length=5)
    assert items[0] == {"prompt": [1, 2, 3], "chosen": [10, 11], "rejected": [12, 13], "desirable": True}
    assert items[1] == {"prompt": [4], "chosen": [12, 13, 14, 15], "rejected": [10, 11], "desirable": False}


def test_first_step_is_half_per_example_and_z0_zero(tmp_path, feedback, tiny_model):
    """Policy = reference at step 0: every log-ratio is 0, so z0 = 0 and each example's loss is
    lambda (1 - sigma(0)) = lambda / 2: the batch loss is (lambda_D n_D + lambda_U n_U) / (2 B). With
    beta = 1000 any mismatch between the cached reference pass and the training pass (packing,
    batching, positions) would be amplified a thousandfold: sigma'(0) beta = 250 per nat."""
    kto.run(_cfg(tiny_model, feedback[0], None, "beta=1000", "undesirable_weight=1.5", "train.max_steps=1",
                 "log.eval_every=0"), tmp_path / "run")
    first = _rows(tmp_path / "run")[0]
    examples = kto.encode_examples(AutoTokenizer.from_pretrained(tiny_model), str(feedback[0]), 128)
    batch = BatchPlan(len(examples), 8, 4).global_batch(0, 0)
    n_d = sum(examples[i]["desirable"] for i in batch)
    assert 0 < n_d < 8, "the test needs both labels in the first batch"
    assert first["loss/kto"] == pytest.approx((n_d * 1.0 + (8 - n_d) * 1.5) / 16, abs=1e-3)
    assert first["kl"] == pytest.approx(0.0, abs=1e-3 / 1000)
    assert first["rewards/margin"] == pytest.approx(0.0, abs=2e-3)
    assert (tmp_path / "run" / "ref_logps.safetensors").exists()


def _sequence_logp(model, prompt: list[int], response: list[int]) -> float:
    """log pi(response | prompt) from one plain forward pass of that sequence alone."""
    ids = torch.tensor([prompt + response])
    labels = torch.tensor([[-100] * len(prompt) + response])
    with torch.no_grad():
        return token_logps(model(input_ids=ids).logits[:, :-1], labels[:, 1:]).sum().item()


def test_a_logged_step_equals_a_plain_recomputation(tmp_path, feedback, tiny_model):
    """Step 3's logged z0 (kl) and loss, recomputed without the recipe's packing, caching or
    batching: the policy of the step-2 checkpoint and the starting model as reference score each
    example (x, y) and its mismatched pair (x, y') one sequence at a time, and the paper's formulas
    (eq. 7) are applied by hand. Tolerance: each summed log-prob is over <= 8 tokens whose terms
    are <= 2 max|z| + log V ~ 15 in size; the packed and single passes reassociate float32 sums,
    within 2^10 units of roundoff u = 6e-8 per token (models.packing.check_packing), so <= 8 * 15 *
    2^10 * 6e-8 = 7.4e-3 at worst per log-prob (measured: 1e-6). z0 is a mean of differences of
    two: atol 1.5e-2 would be the bound; the loss moves by <= lambda beta / 4 = 0.125 per nat.
    Asserted at 1e-4 (z0) and 2e-5 (loss), two orders above the measured differences: any wrong
    pairing, reference row or normaliser moves them by > 1e-2."""
    cfg = _cfg(tiny_model, feedback[0], None, "train.max_steps=3", "log.save_every=2", "log.eval_every=0")
    kto.run(cfg, tmp_path / "run")
    row = _rows(tmp_path / "run")[2]
    tok = AutoTokenizer.from_pretrained(tiny_model)
    policy = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "checkpoints" / "step-2" / "policy").eval()
    ref = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    examples = kto.encode_examples(tok, str(feedback[0]), 128)
    batch = BatchPlan(len(examples), 8, 4).global_batch(2, 0)
    rho, rho_kl, desirable = [], [], []
    for i, k in zip(batch, kto.mismatched(examples, batch), strict=True):
        x, y, y_kl = examples[i]["prompt"], examples[i]["completion"], examples[k]["completion"]
        rho.append(_sequence_logp(policy, x, y) - _sequence_logp(ref, x, y))
        rho_kl.append(_sequence_logp(policy, x, y_kl) - _sequence_logp(ref, x, y_kl))
        desirable.append(examples[i]["desirable"])
    z0 = max(0.0, sum(rho_kl) / len(rho_kl))
    assert z0 > 0.05, "the test needs a policy that moved away from the reference"

    def sigma(t):
        return 1 / (1 + math.exp(-t))

    losses = [1 - sigma(0.5 * (r - z0)) if d else 1 - sigma(0.5 * (z0 - r)) for r, d in zip(rho, desirable, strict=True)]
    assert row["step"] == 3
    assert row["kl"] == pytest.approx(z0, abs=1e-4)
    assert row["loss/kto"] == pytest.approx(sum(losses) / len(losses), abs=2e-5)
    ups = [0.5 * r for r, d in zip(rho, desirable, strict=True) if d]
    downs = [0.5 * r for r, d in zip(rho, desirable, strict=True) if not d]
    assert row["rewards/margin"] == pytest.approx(sum(ups) / len(ups) - sum(downs) / len(downs), abs=1e-4)


def test_kto_learns_the_labels_and_logs_metrics(tmp_path, feedback, tiny_model):
    kto.run(_cfg(tiny_model, *feedback, "train.lr=3e-3", "train.max_steps=24", "log.eval_every=12"), tmp_path / "run")
    rows = _rows(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 25))
    for key in ("loss/kto", "rewards/chosen", "rewards/rejected", "rewards/margin", "kl", "logps/chosen"):
        assert key in rows[0]
    late = rows[-6:]  # past the 6-step epoch: the same examples again, now mostly learned
    assert sum(r["loss/kto"] for r in late) / 6 < 0.9 * rows[0]["loss/kto"]
    assert sum(r["rewards/margin"] for r in late) / 6 > 0.3
    assert {"eval/loss", "eval/margin", "eval/kl"} <= set(rows[11])
    done = json.loads((tmp_path / "run" / "final" / "run_complete.json").read_text())
    assert done["steps"] == 24 and done["desirable"] + done["undesirable"] == 48 and "eval/loss" in done


def test_comparisons_train_as_best_desirable_and_worst_undesirable(tmp_path, tiny_model):
    """A comparison file gives two examples per comparison (read_feedback); K=3 -> best and worst."""
    train = write_jsonl(tmp_path / "c.jsonl", random_comparisons(16, seed=0))
    out = kto.run(_cfg(tiny_model, train, None, "train.max_steps=2", "log.eval_every=0"), tmp_path / "run")
    done = json.loads((out / "run_complete.json").read_text())
    assert done["desirable"] == done["undesirable"] == 16


def test_reference_cache_holds_examples_and_kl_pairs_of_every_step(tmp_path, feedback, tiny_model, monkeypatch):
    """ref_logps: one row per (step, batch position): [log pi_ref(y|x), log pi_ref(y'|x)]. A rerun
    with the same data reads it; another seed (other batches, other pairs) recomputes it."""
    from safetensors.torch import load_file

    from rlhfkit.recipes import dpo

    cfg = _cfg(tiny_model, feedback[0], None, "train.max_steps=2", "log.eval_every=0", "log.save_every=0")
    kto.run(cfg, tmp_path / "run")
    assert load_file(str(tmp_path / "run" / "ref_logps.safetensors"))["train"].shape == (2 * 8, 2)
    calls = []
    original = dpo.reference_logps
    monkeypatch.setattr(dpo, "reference_logps", lambda *a, **k: calls.append(1) or original(*a, **k))
    kto.run(cfg, tmp_path / "run")
    assert calls == []
    kto.run(_cfg(tiny_model, feedback[0], None, "train.max_steps=2", "log.eval_every=0", "log.save_every=0",
                 "train.seed=1"), tmp_path / "run")
    assert calls == [1]


@pytest.mark.parametrize(("up_share", "weights", "warned"), [
    (0.25, [], True),  # 1 * 12 / (1 * 36) = 0.33
    (0.25, ["desirable_weight=3.5"], False),  # 3.5 * 12 / 36 = 1.17
    (0.5, ["desirable_weight=1.5"], True),  # 1.5 > 4/3
])
def test_class_counts_are_printed_with_the_papers_balance_advice(tmp_path, tiny_model, capsys, up_share, weights, warned):
    rows = random_feedback(48, seed=3, up_share=up_share)
    n_d = sum(r["label"] for r in rows)
    train = write_jsonl(tmp_path / "t.jsonl", rows)
    kto.run(_cfg(tiny_model, train, None, "train.max_steps=1", "log.eval_every=0", *weights), tmp_path / "run")
    out = capsys.readouterr().out
    assert f"[kto] {n_d} desirable, {48 - n_d} undesirable examples" in out
    assert ("advises keeping it in [1, 4/3]" in out) == warned


def test_bad_config_is_one_line_config_error(tmp_path, feedback, tiny_model):
    with pytest.raises(ConfigError, match="at least 2 examples"):
        kto.run(_cfg(tiny_model, feedback[0], None, "train.batch_size=1", "train.micro_batch_size=1"), tmp_path / "a")
    with pytest.raises(ConfigError, match="undesirable_weight"):
        kto.run(_cfg(tiny_model, feedback[0], None, "undesirable_weight=0"), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_lora_reference_is_base_without_a_second_copy(tmp_path, feedback, tiny_model, monkeypatch):
    """LoRA adapters start at zero: policy = base with adapters off, so the first loss is exactly
    the policy = reference value (1/2 per example with unit weights, beta = 1000 amplifying any
    mismatch) and the model is loaded once."""
    calls = []
    real = kto.load_policy
    monkeypatch.setattr(kto, "load_policy", lambda *a, **k: calls.append(k) or real(*a, **k))
    lora = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8"]
    out = kto.run(_cfg(tiny_model, feedback[0], None, "beta=1000", "train.max_steps=3", "log.eval_every=0", *lora),
                  tmp_path / "run")
    rows = _rows(tmp_path / "run")
    assert len(calls) == 1
    assert rows[0]["loss/kto"] == pytest.approx(0.5, abs=1e-3)
    # The adapters moved the policy: implied rewards beta * rho far above the float noise (~1e-7 * beta).
    assert abs(rows[-1]["rewards/chosen"]) > 0.1 and abs(rows[-1]["rewards/rejected"]) > 0.1
    assert (out / "adapter" / "adapter_model.safetensors").exists()


def test_resume_matches_uninterrupted_run(tmp_path, feedback):
    """Crash right after the step-3 checkpoint, resume: same final weights (atol 1e-6: the same
    float operations in the same order; resume restores weights, Adam state and RNG) and losses."""
    model = build_tiny_model(tmp_path / "m", "llama")
    full = kto.run(_cfg(model, *feedback), tmp_path / "full")
    with crash_at_save(3):
        kto.run(_cfg(model, *feedback), tmp_path / "cut")
    resumed = kto.run(_cfg(model, *feedback), tmp_path / "cut", resume=True)
    a = AutoModelForCausalLM.from_pretrained(full).state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    ra, rb = _rows(tmp_path / "full"), _rows(tmp_path / "cut")
    assert [r["step"] for r in rb] == list(range(1, 7))
    assert [r["loss/kto"] for r in ra] == pytest.approx([r["loss/kto"] for r in rb], abs=1e-6)
    assert [r["kl"] for r in ra] == pytest.approx([r["kl"] for r in rb], abs=1e-6)


@pytest.mark.parametrize("recipe", ["kto", "dpo"])
def test_the_reference_is_freed_once_its_table_is_cached(tmp_path, feedback, tiny_model, monkeypatch, recipe):
    """Without a sampling evaluation (no kl/mean) training needs only the cached table: the
    reference model is gone (garbage-collectable) by the time the optimizer state is built."""
    import gc
    import weakref

    from rlhfkit.recipes import dpo

    module = {"kto": kto, "dpo": dpo}[recipe]
    refs, alive = [], []
    real_ref, real_opt = module.load_reference, module.build_optimizer

    def load_reference(*a, **k):
        model = real_ref(*a, **k)
        refs.append(weakref.ref(model))
        return model

    def build_optimizer(*a, **k):
        gc.collect()
        alive.append(refs[0]() is not None)
        return real_opt(*a, **k)

    monkeypatch.setattr(module, "load_reference", load_reference)
    monkeypatch.setattr(module, "build_optimizer", build_optimizer)
    train = feedback[0] if recipe == "kto" else write_jsonl(tmp_path / "c.jsonl", random_comparisons(16, seed=0))
    cfg = load_config(module.KTOConfig if recipe == "kto" else dpo.DPOConfig, None, [
        f"model.name_or_path={tiny_model}", f"data.train={train}", "sampling.prompts=null", "sampling.text=null",
        "train.batch_size=8", "train.micro_batch_size=8", "train.max_steps=1", "log.progress=false"])
    module.run(cfg, tmp_path / "run")
    assert len(refs) == 1 and alive == [False]


def test_cli_kto_verb_and_one_line_data_error(tmp_path, feedback, tiny_model, capsys):
    """`rlhfkit kto` runs from the command line; a feedback file with one label only is a one-line
    error naming the file and field (exit 2), before any run folder is written."""
    from rlhfkit.cli import main

    sets = [f"model.name_or_path={tiny_model}", "sampling.prompts=null", "sampling.text=null", "train.batch_size=8",
            "train.micro_batch_size=8", "train.max_steps=1", "log.progress=false"]
    args = [a for s in sets for a in ("--set", s)]
    assert main(["kto", "--out", str(tmp_path / "ok"), "--set", f"data.train={feedback[0]}", *args]) == 0
    assert _rows(tmp_path / "ok")[0]["stage"] == "kto"
    ups = write_jsonl(tmp_path / "ups.jsonl", [{**r, "label": True} for r in random_feedback(16)])
    capsys.readouterr()
    assert main(["kto", "--out", str(tmp_path / "bad"), "--set", f"data.train={ups}", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ups.jsonl" in err and "field 'label'" in err and "both" in err
    assert not (tmp_path / "bad").exists()
