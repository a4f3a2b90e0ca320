"""rlhfkit's sampling loop (`rollout.sample_loop`, backend "hf") against transformers' `generate`.

What the loop guarantees: the same model inputs at every step, hence the same logits bit for bit,
the same warpers (temperature, top-k, top-p), and a sampler (`draw`) that picks each token with its
probability. It draws other random numbers than `torch.multinomial`, so a seed gives other samples
than `generate` (the same distribution); greedy decoding gives the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from conftest import build_tiny_model
from transformers import AutoModelForCausalLM, LogitsProcessor

from rlhfkit.rollout import (
    HFBackend,
    SamplingParams,
    draw,
    generate,
    loop_supported,
    make_backend,
    sample_loop,
    warpers,
)

PROMPTS = [[5, 6], [7, 8, 9, 10, 11], [12], [13, 14, 15], [16, 17, 18, 19], [20, 21], [22], [23, 24, 25, 26, 27, 28]]


@dataclass
class Tok:
    """What `generate` reads from a tokenizer; the EOS id is chosen per test so rows end mid-way."""

    eos_token_id: int
    pad_token_id: int = 0

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


@pytest.fixture(scope="module", params=["gpt2", "llama", "gpt_neox"])
def model(request, tmp_path_factory):
    folder = build_tiny_model(tmp_path_factory.mktemp(request.param), arch=request.param)
    return AutoModelForCausalLM.from_pretrained(folder).eval()


def left_padded(prompts, pad=0):
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def frequent_token(model, ids, mask, steps=4) -> int:
    """The token greedy decoding emits most often in its first steps: as EOS, some rows end early."""
    new = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=steps, pad_token_id=0,
                         eos_token_id=None)[:, ids.shape[1]:]
    return int(torch.mode(new[new != 0]).values)


def loop_logits(model, ids, mask, params, eos):
    """The loop's new tokens and the raw last-position logits of each of its forward passes."""
    seen = []
    handle = model.register_forward_hook(lambda _m, _i, out: seen.append(out.logits[:, -1].clone()))
    try:
        with torch.no_grad():
            tokens = sample_loop(model, ids, mask, params, eos, 0)
    finally:
        handle.remove()
    return tokens, seen


def assert_ends_vary(tokens, eos):
    """Non-vacuity: some row ended before the last step while another went on (pad fed after EOS)."""
    ended = (tokens == eos).any(1)
    assert ended.any() and not ended.all()


class Replay(LogitsProcessor):
    """Forces `generate` to emit the given tokens, so its logits are those of the same prefix."""

    def __init__(self, tokens):
        self.tokens, self.t = tokens, 0

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, -float("inf"))
        forced[torch.arange(len(scores)), self.tokens[:, self.t]] = 0.0
        self.t += 1
        return forced


@pytest.mark.parametrize("prompts", [PROMPTS, [[5, 6, 7]] * 3 + [[8, 9, 10]]], ids=["left-padded", "no-padding"])
def test_greedy_tokens_and_every_steps_logits_equal_generate(model, prompts):
    ids, mask = left_padded(prompts)
    eos = frequent_token(model, ids, mask)
    params = SamplingParams(max_new_tokens=9, temperature=0.0)
    tokens, logits = loop_logits(model, ids, mask, params, eos)
    ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=9, eos_token_id=eos,
                         pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    assert torch.equal(tokens, ref.sequences[:, ids.shape[1]:])
    assert len(logits) == len(ref.logits)  # the same number of steps: both stop when every row has ended
    for ours, theirs in zip(logits, ref.logits, strict=True):
        assert torch.equal(ours, theirs)  # bit for bit
    if len(prompts) == len(PROMPTS):
        assert_ends_vary(tokens, eos)


def test_sampled_prefix_gives_generates_logits_at_every_step(model):
    """Sampling with temperature, top-k and top-p: `generate` replaying the loop's tokens sees
    exactly the loop's logits at every step (same inputs: positions, mask, cache, pad after EOS)."""
    ids, mask = left_padded(PROMPTS)
    eos = frequent_token(model, ids, mask)
    params = SamplingParams(max_new_tokens=10, temperature=0.7, top_k=6, top_p=0.9)
    torch.manual_seed(3)
    tokens, logits = loop_logits(model, ids, mask, params, eos)
    assert_ends_vary(tokens, eos)
    ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=tokens.shape[1],
                         eos_token_id=eos, pad_token_id=0, logits_processor=[Replay(tokens)], output_logits=True,
                         return_dict_in_generate=True)
    assert torch.equal(ref.sequences[:, ids.shape[1]:], tokens)
    for ours, theirs in zip(logits, ref.logits, strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("params", [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7),
                                    SamplingParams(temperature=1.3, top_k=4), SamplingParams(temperature=0.8, top_p=0.85),
                                    SamplingParams(temperature=0.6, top_k=5, top_p=0.7)])
def test_warpers_are_generates(model, params):
    """`warpers(params)` turns generate's raw logits into exactly the scores it sampled from."""
    ids, mask = left_padded(PROMPTS)
    torch.manual_seed(0)
    ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=4, pad_token_id=0,
                         eos_token_id=None, temperature=params.temperature, top_k=params.top_k or None,
                         top_p=params.top_p, output_logits=True, output_scores=True, return_dict_in_generate=True)
    for raw, scores in zip(ref.logits, ref.scores, strict=True):
        ours = raw
        for w in warpers(params):
            ours = w(None, ours)
        assert torch.equal(ours, scores)


def test_draw_picks_the_interval_u_falls_in():
    """probs (unnormalised, sum 2) = [0, .5, 0, 1, .5, 0]: cumulative / total = 0, .25, .25, .75, 1, 1,
    so u in [0, .25) -> 1, [.25, .75) -> 3, [.75, 1) -> 4; the zero-probability tokens 0, 2, 5 never,
    not even at u = 0 or the largest double below 1."""
    probs = torch.tensor([[0.0, 0.5, 0.0, 1.0, 0.5, 0.0]])
    below_one = 1.0 - 2.0 ** -53
    cases = {0.0: 1, 0.1: 1, 0.25: 3, 0.5: 3, 0.7499: 3, 0.75: 4, 0.9: 4, below_one: 4}
    u = torch.tensor(list(cases), dtype=torch.float64)[:, None]
    assert draw(probs.expand(len(cases), -1), u).tolist() == list(cases.values())


def test_draw_frequencies_match_probabilities():
    """200,000 draws from p = (.4, .2, .15, .1, .1, .05, 0): Pearson's X^2 over the 6 positive
    categories (5 degrees of freedom) stays under 35.9, the 1e-6 upper quantile of chi^2_5, and the
    zero-probability category is never drawn (a fixed seed: the test is deterministic)."""
    p = torch.tensor([0.4, 0.2, 0.15, 0.1, 0.1, 0.05, 0.0])
    n = 200_000
    g = torch.Generator().manual_seed(0)
    picks = draw(p.expand(n, -1), torch.rand((n, 1), dtype=torch.float64, generator=g))
    counts = torch.bincount(picks, minlength=len(p)).double()
    assert counts[-1] == 0
    expected = p[:-1].double() * n
    assert float(((counts[:-1] - expected) ** 2 / expected).sum()) < 35.9


def test_draw_refuses_nan():
    with pytest.raises(RuntimeError, match="nan"):
        draw(torch.tensor([[0.5, float("nan")]]), torch.tensor([[0.3]], dtype=torch.float64))


def test_generate_loop_engine_is_seeded_and_cut_like_generate(model):
    """Through `generate`: seeded (same seed, same samples; another seed, others), several chunks,
    responses cut at the first EOS with `finished`, like the transformers engine's."""
    eos = frequent_token(model, *left_padded(PROMPTS))
    tok = Tok(eos)
    params = SamplingParams(max_new_tokens=8, temperature=1.0)
    a = generate(model, tok, PROMPTS, params, batch_size=3, generator_seed=5, engine="loop")
    assert a == generate(model, tok, PROMPTS, params, batch_size=3, generator_seed=5, engine="loop")
    assert a != generate(model, tok, PROMPTS, params, batch_size=3, generator_seed=6, engine="loop")
    for s in a:
        assert s.finished == (eos in s.response_ids)
        assert eos not in s.response_ids[:-1] and (s.finished or len(s.response_ids) == 8)
    assert any(s.finished for s in a) and not all(s.finished for s in a)
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0)
    assert (generate(model, tok, PROMPTS, greedy, batch_size=3, engine="loop")
            == generate(model, tok, PROMPTS, greedy, batch_size=3, engine="generate"))


def test_unsupported_models_fall_back_to_generate(model):
    """A generation config that adds a processor (here top_k = 3) is not something the loop
    reproduces: engine "loop" then runs transformers' generate, sample for sample."""
    tok = Tok(frequent_token(model, *left_padded(PROMPTS)))
    params = SamplingParams(max_new_tokens=6, temperature=1.0)
    assert loop_supported(model)
    model.generation_config.top_k = 3
    try:
        assert not loop_supported(model)
        assert (generate(model, tok, PROMPTS, params, generator_seed=1, engine="loop")
                == generate(model, tok, PROMPTS, params, generator_seed=1, engine="generate"))
    finally:
        model.generation_config.top_k = None
    assert loop_supported(model)


def test_lora_model_samples_with_its_adapters(tmp_path):
    """A peft LoRA policy: the loop runs the model under the wrapper with its adapters on, and
    greedy decoding equals generate's on the peft model (adapters made non-trivial first)."""
    from rlhfkit.config import LoRAConfig, ModelConfig
    from rlhfkit.models.loading import apply_lora, load_policy

    folder = build_tiny_model(tmp_path)
    cfg = ModelConfig(name_or_path=str(folder), lora=LoRAConfig(enabled=True, r=4))
    policy = apply_lora(load_policy(ModelConfig(name_or_path=str(folder))), cfg)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    policy.eval()
    assert loop_supported(policy)
    ids, mask = left_padded(PROMPTS)
    eos = frequent_token(policy, ids, mask)
    params = SamplingParams(max_new_tokens=7, temperature=0.0)
    with torch.no_grad():
        ours = sample_loop(policy, ids, mask, params, eos, 0)
        with policy.disable_adapter():
            base = sample_loop(policy, ids, mask, params, eos, 0)
    ref = policy.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=7, eos_token_id=eos,
                          pad_token_id=0)[:, ids.shape[1]:]
    assert torch.equal(ours, ref)
    assert not torch.equal(ours, base)  # the adapters changed the samples: they were on


def test_backends_hf_is_the_loop_and_hf_generate_is_transformers(model):
    tok = Tok(frequent_token(model, *left_padded(PROMPTS)))
    params = SamplingParams(max_new_tokens=6, temperature=1.0)
    hf, hf_generate = make_backend("hf", model, tok), make_backend("hf_generate", model, tok)
    assert isinstance(hf, HFBackend) and isinstance(hf_generate, HFBackend)
    assert hf.generate(PROMPTS, params, 4, seed=2) == generate(model, tok, PROMPTS, params, 4, 2, engine="loop")
    assert hf_generate.generate(PROMPTS, params, 4, seed=2) == generate(model, tok, PROMPTS, params, 4, 2,
                                                                        engine="generate")
