"""`rlhfkit sample` and `rlhfkit eval` on a tiny model; responses cut at the first EOS."""

from __future__ import annotations

import json

import torch
from conftest import write_jsonl

from rlhfkit.cli import main
from rlhfkit.config import ModelConfig
from rlhfkit.models.loading import load_policy, load_tokenizer
from rlhfkit.rollout import SamplingParams, _cut, generate


def test_sample_writes_k_samples_per_prompt(tmp_path, tiny_model):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "the movie"}, {"prompt": "i liked"}])
    out = tmp_path / "s.jsonl"
    assert main(["sample", "--model", str(tiny_model), "--prompts", str(prompts), "--k", "3",
                 "--max-new-tokens", "5", "--out", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["the movie", "i liked"]
    assert all(len(r["responses"]) == 3 and len(r["finished"]) == 3 for r in rows)


def test_eval_reports_perplexity_and_length(tmp_path, tiny_model):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "the movie"}] * 4)
    text = write_jsonl(tmp_path / "t.jsonl", [{"text": "the movie was great ."}] * 3)
    out = tmp_path / "e.json"
    assert main(["eval", "--model", str(tiny_model), "--prompts", str(prompts), "--text", str(text), "--gold", "none",
                 "--max-new-tokens", "6", "--out", str(out)]) == 0
    m = json.loads(out.read_text())["metrics"]
    vocab = 34
    assert 1.0 < m["eval/perplexity"] < 4 * vocab  # a random tiny model: near-uniform, finite
    assert 1 <= m["response/length"] <= 6 and 0.0 <= m["response/eos_rate"] <= 1.0


def test_response_is_cut_at_first_eos_and_unfinished_is_flagged(tiny_model):
    tok = load_tokenizer(ModelConfig(name_or_path=str(tiny_model)))
    eos = tok.eos_token_id
    w = tok.convert_tokens_to_ids(["great", "movie"])
    s = _cut([1], [w[0], eos, w[1], eos], eos, tok, None)
    assert s.response_ids == [w[0], eos] and s.finished and s.text == "great"  # no second EOS
    s = _cut([1], [w[0], w[1]], eos, tok, None)
    assert not s.finished and s.response_ids == w
    s = _cut([1], [w[0], tok.convert_tokens_to_ids("."), w[1]], eos, tok, stop=".")
    assert s.finished and s.response_ids[-1] == eos and s.text.endswith(".")


def test_generation_with_left_padding_matches_unpadded(tiny_model):
    """Left-padded batched greedy decoding equals decoding each prompt alone."""
    cfg = ModelConfig(name_or_path=str(tiny_model))
    model, tok = load_policy(cfg), load_tokenizer(cfg)
    prompts = [tok("the movie was")["input_ids"], tok("i")["input_ids"]]
    greedy = SamplingParams(max_new_tokens=6, temperature=0.0)
    batched = generate(model, tok, prompts, greedy)
    alone = [generate(model, tok, [p], greedy)[0] for p in prompts]
    assert [s.response_ids for s in batched] == [s.response_ids for s in alone]
    assert torch.is_grad_enabled()
