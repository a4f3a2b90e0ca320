"""Constitutional AI on the lab with real (tiny) language models: the lab assistant (the base
model after a short continued pretraining on CAI-format documents, `lab/cai_corpus.py`) revises
and judges the lab base model's responses.

Each test asserts that gold moves the right way: revisions beat the originals they revise, the
judge agrees with gold more often than chance, and SFT on SL-CAI data raises the policy's gold.
The samples (and the lab model itself) depend on the CPU's float rounding, so the bounds are
statistical with wide margins (measured on one lab: gain 0.34 > 0.1, agreement 0.85 of 86 decided
pairs > 0.65 of 50, SL-CAI gold +0.27 > +0.05); no test relies on a sample's length: judge and
CAI prompts that outgrow the model's 128 positions are cut to fit (a 129-token judge prompt
crashed this file on a fresh lab before).
The full-size measurement with intervals is `benchmarks/cai_lab.py`.
"""

from __future__ import annotations

import json
import random
import statistics

import pytest

from rlhfkit.config import ModelConfig, load_config
from rlhfkit.data import encode_prompt, read_records
from rlhfkit.rollout import SamplingParams, generate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab():
    from rlhfkit.lab import ensure_lab
    from rlhfkit.lab.cai_corpus import ensure_assistant

    lab = ensure_lab()
    ensure_assistant(lab)  # trained once per lab (about four CPU minutes), then cached beside it
    return lab


def _gold(prompts, responses):
    from rlhfkit.lab import gold_score

    return gold_score([p + r for p, r in zip(prompts, responses, strict=True)])


def _cai(lab, tmp_path, prompts_source, n, rounds=2):
    from rlhfkit.jobs import cai

    cfg = load_config(cai.CAIConfig, None, [
        f"model.name_or_path={lab / 'cai_assistant'}", f"initial_model={lab / 'base'}", f"prompts={prompts_source}",
        f"limit={n}", "constitution=lab",
        "history=latest", f"rounds={rounds}", "batch_size=128", "sampling.revise_temperature=0.7"])
    cai.run(cfg, tmp_path)
    return [json.loads(x) for x in (tmp_path / cai.STEPS_FILE).read_text().splitlines()]


def test_revisions_raise_gold_over_the_originals(lab, tmp_path):
    rows = _cai(lab, tmp_path, "lab:prompts_eval", 96)
    prompts = [r["prompt"] for r in rows]
    original = _gold(prompts, [r["response"] for r in rows])
    final = _gold(prompts, [r["final"] for r in rows])
    first = _gold(prompts, [r["rounds"][0]["revision"] if r["rounds"][0].get("accepted") else r["response"] for r in rows])
    asked = [r for r in rows if not r["rounds"][0].get("no_flaw")]  # a "none ." critique keeps the draft
    # a floor, not a tuned value: the lab base's drafts break a principle far more often than 30%, and
    # critiques flag 60-93% of broken drafts (docs/FINDINGS.md), so the loop must still revise this many
    assert len(asked) >= 0.3 * len(rows)
    assert sum(bool(r["rounds"][0].get("accepted")) for r in asked) >= 0.9 * len(asked)  # revisions end properly
    assert not any("skipped" in x for r in rows for x in r["rounds"])  # long responses are cut to fit, never skipped
    gain = statistics.fmean(f - o for f, o in zip(final, original, strict=True))
    assert statistics.fmean(first) > statistics.fmean(original)
    assert gain > 0.1, (statistics.fmean(original), statistics.fmean(first), statistics.fmean(final))


def test_ai_judge_agrees_with_gold_more_than_chance(lab):
    from rlhfkit.feedback.constitution import load_constitution
    from rlhfkit.feedback.judge import AIJudge
    from rlhfkit.models.loading import load_policy, load_tokenizer

    policy, ptok = load_policy_and_tokenizer(ModelConfig(name_or_path=str(lab / "base")))
    cfg = ModelConfig(name_or_path=str(lab / "cai_assistant"))
    model, tok = load_policy(cfg), load_tokenizer(cfg)
    prompts = [r.prompt for r in read_records("lab:prompts_eval", "prompt")][:96]
    samples = generate(policy, ptok, [encode_prompt(ptok, p) for p in prompts for _ in range(2)], SamplingParams(),
                       batch_size=192, generator_seed=1)
    a, b = [s.text for s in samples[0::2]], [s.text for s in samples[1::2]]
    ga, gb = _gold(prompts, a), _gold(prompts, b)
    verdicts = AIJudge(model, tok, load_constitution("lab"), seed=0).judge_pairs(list(zip(prompts, a, b, strict=True)))
    decided = [(v.p > 0.5) == (x > y) for v, x, y in zip(verdicts, ga, gb, strict=True) if abs(x - y) > 0.1]
    assert len(decided) > 50
    assert statistics.fmean(decided) > 0.65


def test_sft_on_sl_cai_data_raises_gold(lab, tmp_path):
    from rlhfkit.recipes import sft

    _cai(lab, tmp_path / "cai", "lab:prompts_train", 256)
    cfg = load_config(sft.SFTConfig, None, [
        f"model.name_or_path={lab / 'base'}", f"data.train={tmp_path / 'cai' / 'sl_cai.jsonl'}", "data.eval=null",
        "train.batch_size=32", "train.micro_batch_size=32", "train.lr=1e-3", "train.epochs=4",
        "log.save_every=0", "log.eval_every=0", "log.progress=false"])
    tuned = sft.run(cfg, tmp_path / "sft")
    prompts = [r.prompt for r in read_records("lab:prompts_eval", "prompt")][:128] * 2
    golds = {}
    for name, path in (("base", lab / "base"), ("sl_cai", tuned)):
        mcfg = ModelConfig(name_or_path=str(path))
        model, tok = load_policy_and_tokenizer(mcfg)
        out = generate(model, tok, [encode_prompt(tok, p) for p in prompts], SamplingParams(), batch_size=128,
                       generator_seed=random.Random(3).randrange(1000))
        golds[name] = statistics.fmean(_gold(prompts, [s.text for s in out]))
    assert golds["sl_cai"] > golds["base"] + 0.05, golds


def load_policy_and_tokenizer(cfg):
    from rlhfkit.models.loading import load_policy, load_tokenizer

    return load_policy(cfg), load_tokenizer(cfg)
