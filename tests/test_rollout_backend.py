"""Generation backends: the HF backend is exactly `rollout.generate`; the vLLM backend's own code
(sampling arguments, output conversion, weight sync, errors) runs against a fake `vllm` module,
so nothing here needs vLLM or a GPU."""

from __future__ import annotations

import importlib.machinery
import sys
import types
from dataclasses import dataclass, field

import pytest
import torch
from conftest import build_tiny_model

from rlhfkit.config import LoRAConfig, ModelConfig
from rlhfkit.models.loading import apply_lora, load_policy, load_tokenizer
from rlhfkit.rollout import (
    HFBackend,
    Sample,
    SamplingParams,
    VLLMBackend,
    _cut,
    generate,
    hf_weights,
    make_backend,
    samples_from_vllm,
    vllm_sampling_kwargs,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = build_tiny_model(tmp_path_factory.mktemp("m"))
    cfg = ModelConfig(name_or_path=str(folder))
    return load_policy(cfg), load_tokenizer(cfg), folder


# ----------------------------------------------------------------------------- HF backend


@pytest.mark.parametrize("params", [SamplingParams(max_new_tokens=7, temperature=1.0),
                                    SamplingParams(max_new_tokens=5, temperature=0.0),
                                    SamplingParams(max_new_tokens=6, temperature=0.8, top_k=5, stop=".")])
def test_hf_backend_is_exactly_generate(tiny, params):
    model, tok, _ = tiny
    prompts = [[5, 6], [7, 8, 9, 10], [11], [12, 13, 14]] * 2
    direct = generate(model, tok, prompts, params, batch_size=3, generator_seed=11, engine="loop")
    backend = make_backend("hf", model, tok)
    assert isinstance(backend, HFBackend)
    via = backend.generate(prompts, params, batch_size=3, seed=11)
    assert via == direct
    backend.sync_weights(model)  # a no-op: it samples from the live model
    assert backend.generate(prompts, params, batch_size=3, seed=11) == direct
    if params.temperature > 0:  # the seed matters, so equality above is not vacuous
        assert backend.generate(prompts, params, batch_size=3, seed=12) != direct


def test_hf_backend_samples_from_the_live_weights(tiny):
    """After an in-place update the next call samples from the new weights, no sync needed."""
    model, tok, _ = tiny
    backend = HFBackend(model, tok)
    params = SamplingParams(max_new_tokens=3, temperature=0.0)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():  # final hidden state = ones, head = e_eos: greedy emits EOS at once
            model.transformer.ln_f.weight.zero_()
            model.transformer.ln_f.bias.fill_(1.0)
            head = model.get_output_embeddings().weight
            head.zero_()
            head[tok.eos_token_id] = 1.0
        (s,) = backend.generate([[5, 6]], params)
        assert s.response_ids == [tok.eos_token_id] and s.finished
    finally:
        model.load_state_dict(saved)


def test_factory_rejects_unknown_names_and_hf_options(tiny):
    model, tok, _ = tiny
    with pytest.raises(ValueError, match="unknown generation backend 'sglang'.*hf, hf_generate, vllm"):
        make_backend("sglang", model, tok)
    with pytest.raises(ValueError, match="takes no options"):
        make_backend("hf", model, tok, gpu_memory_utilization=0.5)


# ----------------------------------------------------------------------------- vLLM: errors


def test_vllm_missing_says_how_to_install(tiny, monkeypatch):
    model, tok, _ = tiny
    monkeypatch.setitem(sys.modules, "vllm", None)  # "not importable", even where vLLM is installed
    with pytest.raises(ImportError, match=r"install rlhfkit\[vllm\] on a CUDA machine"):
        make_backend("vllm", model, tok)


def test_vllm_without_cuda_says_so(tiny, monkeypatch):
    model, tok, _ = tiny
    fake = FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"needs a CUDA GPU.*install rlhfkit\[vllm\] on a CUDA machine"):
        make_backend("vllm", model, tok)
    assert fake.llms == []  # refused before building an engine


# ----------------------------------------------------------------------------- vLLM: a fake module


@dataclass
class FakeCompletion:  # vllm.CompletionOutput's fields that the backend reads
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS / stop token) or "length"


@dataclass
class FakeRequest:  # vllm.RequestOutput
    prompt_token_ids: list[int]
    outputs: list[FakeCompletion]


@dataclass
class FakeEngineModel:
    loaded: list[list[tuple[str, torch.Tensor]]] = field(default_factory=list)

    def load_weights(self, weights):
        self.loaded.append(list(weights))


class FakeVLLM:
    """A stand-in `vllm` module: LLM records its arguments and answers scripted completions."""

    def __init__(self, script=None):
        self.llms, self.script = [], script or {}
        module = types.ModuleType("vllm")
        module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
        fake = self

        class SamplingParams:
            def __init__(self, **kwargs):
                self.kwargs = kwargs

        class LLM:
            def __init__(self, **kwargs):
                self.kwargs, self.calls, self.resets = kwargs, [], 0
                model = FakeEngineModel()
                runner = types.SimpleNamespace(model=model)
                self.engine_model = model
                self.llm_engine = types.SimpleNamespace(
                    model_executor=types.SimpleNamespace(driver_worker=types.SimpleNamespace(model_runner=runner)))
                fake.llms.append(self)

            def generate(self, prompts, sampling_params, use_tqdm=True):
                self.calls.append((prompts, sampling_params))
                return [FakeRequest(p["prompt_token_ids"], [FakeCompletion(*fake.script[tuple(p["prompt_token_ids"])])])
                        for p in prompts]

            def reset_prefix_cache(self):
                self.resets += 1

        module.LLM, module.SamplingParams = LLM, SamplingParams
        self.module = module


@pytest.fixture
def fake_vllm(monkeypatch):
    fake = FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    return fake


def test_vllm_outputs_follow_the_hf_conventions(tiny):
    """Same cut as the HF path: at the first EOS (nothing after it kept), `finished` only when EOS
    was emitted, an EOS that vLLM left out of a "stop" completion put back, stop strings cut."""
    _, tok, _ = tiny
    eos = tok.eos_token_id
    w = tok.convert_tokens_to_ids
    the, movie, great, dot = w("the"), w("movie"), w("great"), w(".")
    prompts = [[5], [6], [7], [8], [9]]
    outputs = [
        FakeRequest([5], [FakeCompletion([the, movie, eos], "stop")]),
        FakeRequest([6], [FakeCompletion([the, movie], "stop")]),  # EOS not in the ids
        FakeRequest([7], [FakeCompletion([the, movie, dot], "length")]),
        FakeRequest([8], [FakeCompletion([the, eos, great, eos], "stop")]),  # anything after the first EOS goes
        FakeRequest([9], [FakeCompletion([the, great, movie, dot], "length")]),
    ]
    got = samples_from_vllm(prompts, outputs, tok, stop="great")
    assert got[0] == Sample([5], [the, movie, eos], True, "the movie")
    assert got[1] == Sample([6], [the, movie, eos], True, "the movie")
    assert got[2] == Sample([7], [the, movie, dot], False, "the movie.")  # never ended
    assert got[3] == Sample([8], [the, eos], True, "the")
    assert got[4] == Sample([9], [the, great, eos], True, "the great")
    # The shared cut: what the HF path makes of the same ids (with EOS where vLLM reported a stop).
    rows = [[the, movie, eos], [the, movie, eos], [the, movie, dot], [the, eos, great, eos], [the, great, movie, dot]]
    assert got == [_cut(p, r, eos, tok, "great") for p, r in zip(prompts, rows, strict=True)]


def test_vllm_sampling_arguments_match_the_hf_params():
    kw = vllm_sampling_kwargs(SamplingParams(max_new_tokens=9, temperature=0.7, top_k=0, top_p=0.9, stop="."), eos=2, seed=5)
    assert kw == dict(n=1, max_tokens=9, temperature=0.7, top_k=-1, top_p=0.9, seed=5, stop_token_ids=[2],
                      ignore_eos=False, detokenize=False, logprobs=0)  # the sampled tokens' log-probs (TIS)
    assert vllm_sampling_kwargs(SamplingParams(top_k=4), eos=2, seed=None)["top_k"] == 4


def test_vllm_backend_generates_and_syncs_through_the_engine(tiny, fake_vllm):
    model, tok, folder = tiny
    eos = tok.eos_token_id
    fake_vllm.script = {(5, 6): ([7, 8, eos], "stop"), (9,): ([10, 11, 12], "length")}
    backend = make_backend("vllm", str(folder), tok, gpu_memory_utilization=0.25)
    (llm,) = fake_vllm.llms
    assert llm.kwargs["model"] == str(folder) and llm.kwargs["gpu_memory_utilization"] == 0.25
    assert llm.kwargs["trust_remote_code"] is False

    samples = backend.generate([[5, 6], [9]], SamplingParams(max_new_tokens=3), batch_size=1, seed=40)
    assert [s.response_ids for s in samples] == [[7, 8, eos], [10, 11, 12]]
    assert [s.finished for s in samples] == [True, False]
    prompts, sps = llm.calls[0]
    assert prompts == [{"prompt_token_ids": [5, 6]}, {"prompt_token_ids": [9]}]
    assert [sp.kwargs["seed"] for sp in sps] == [40, 41]  # per prompt: same seed, same samples on resume
    assert sps[0].kwargs["max_tokens"] == 3 and sps[0].kwargs["stop_token_ids"] == [eos]

    backend.sync_weights(model)
    (loaded,) = llm.engine_model.loaded
    state = model.state_dict()
    assert [n for n, _ in loaded] == list(state)
    for name, value in loaded:
        assert torch.equal(value, state[name])
    assert llm.resets == 1  # prefix cache computed by the old weights is dropped


def test_vllm_backend_from_a_live_lora_model_syncs_merged_weights(tiny, fake_vllm, tmp_path):
    """A live model is saved for the engine to load (LoRA: merged); sync sends W + (alpha/r) B A
    under the base model's names and leaves the trainer's model unmerged."""
    _, tok, folder = tiny
    cfg = ModelConfig(name_or_path=str(folder), lora=LoRAConfig(enabled=True, r=2, alpha=4))
    model = apply_lora(load_policy(ModelConfig(name_or_path=str(folder))), cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # a non-zero update, so merged != base
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    backend = VLLMBackend(model, tok)
    (llm,) = fake_vllm.llms
    saved = llm.kwargs["model"]
    from transformers import AutoModelForCausalLM

    merged_saved = AutoModelForCausalLM.from_pretrained(saved)
    backend.sync_weights(model)
    loaded = dict(llm.engine_model.loaded[0])
    assert not any("lora_" in n or "base_layer" in n for n in loaded)
    plain = load_policy(ModelConfig(name_or_path=str(folder))).state_dict()
    assert set(loaded) == set(plain)
    changed = [n for n in loaded if not torch.equal(loaded[n], plain[n])]
    assert changed  # the adapters' update arrived
    for n, v in merged_saved.state_dict().items():
        torch.testing.assert_close(loaded[n], v)  # the engine's start weights == the synced ones
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before)  # unmerged again
    assert hf_weights(model)[0][0] == next(iter(loaded))
