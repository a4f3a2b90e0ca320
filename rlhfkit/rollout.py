"""The one place that generates: batched sampling with KV cache, left padding, EOS handling.

Every response is cut at its first EOS (so there is never a second EOS and nothing after it is
scored), and `finished` records whether an EOS was emitted at all, so callers can penalise
responses that never end instead of silently scoring a truncated text.

`generate` runs one of two engines on a Hugging Face model:
- "generate": transformers' `model.generate` (the default for the data jobs);
- "loop": rlhfkit's own sampling loop over the KV cache (`sample_loop`), which feeds the model
  exactly what `generate` feeds it (so every step's logits are the same, bit for bit, and so are
  the temperature / top-k / top-p warpers) without `generate`'s per-call and per-step machinery,
  a cache that grows by concatenation, or `torch.multinomial`'s one exponential draw per
  vocabulary entry per step: it draws one uniform per row per step (inverse CDF). Same
  probabilities for every token, hence the same distribution of responses; NOT the same samples
  for a given seed. Models the loop does not cover (`loop_supported`) fall back to "generate".
A `GenerationBackend` (`make_backend("hf" | "hf_generate" | "vllm", ...)`) wraps one of them, or a
vLLM engine on a CUDA machine (`pip install rlhfkit[vllm]`), behind one interface:
`generate(prompt_ids, params, batch_size, seed) -> list[Sample]` and `sync_weights(model)`.

Why one file (~400 lines): it is the one place that generates; the sampling loop and the backends
share `Sample`, `SamplingParams` and the EOS cut, so every engine cuts and reports responses the
same way.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal, Protocol

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.generation import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from rlhfkit.data.tokenize import pad_batch
from rlhfkit.models.loading import is_peft


@dataclass
class Sample:
    prompt_ids: list[int]
    response_ids: list[int]  # up to and including the first EOS, if any
    finished: bool  # True when the response ended with EOS
    text: str  # decoded response, special tokens removed
    logprobs: list[float] | None = None  # the sampler's log-prob of each response token, when it reports them


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop: str | None = None  # optional stop string: the response is cut just after it


Engine = Literal["loop", "generate"]


@torch.no_grad()
def generate(
    model, tokenizer, prompts: list[list[int]], params: SamplingParams, batch_size: int = 64,
    generator_seed: int | None = None, engine: Engine = "generate",
) -> list[Sample]:
    """Sample one response per prompt (repeat prompts for K samples), `batch_size` prompts at a time,
    with `engine` "generate" (transformers) or "loop" (`sample_loop`; "generate" where the model is
    not `loop_supported`)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    run = sample_loop if engine == "loop" and loop_supported(model) else _hf_generate
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    out: list[Sample] = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        input_ids = pad_batch(chunk, pad, "left").to(device)
        attention = pad_batch([[1] * len(p) for p in chunk], 0, "left").to(device)
        new = run(model, input_ids, attention, params, eos, pad)  # (b, <= max_new_tokens)
        for prompt, row in zip(chunk, new.tolist(), strict=True):
            out.append(_cut(prompt, row, eos, tokenizer, params.stop))
    model.train(was_training)
    return out


def _hf_generate(model, input_ids, attention, params: SamplingParams, eos: int, pad: int) -> torch.Tensor:
    kwargs = dict(do_sample=params.temperature > 0, max_new_tokens=params.max_new_tokens, eos_token_id=eos,
                  pad_token_id=pad, use_cache=True)
    if params.temperature > 0:
        kwargs.update(temperature=params.temperature, top_k=params.top_k or None, top_p=params.top_p)
    return model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)[:, input_ids.shape[1] :]


# ----------------------------------------------------------------------------- the sampling loop
# transformers' `_sample` (5.x), step for step: the prefill gets the left-padded prompts with
# position ids = cumsum(mask) - 1 (0 on padding), the mask (dropped when there is no padding) and
# logits_to_keep=1; every later step gets one token per row, the next position and the mask grown
# by one; rows that have ended are fed the pad token; the loop stops once every row has emitted
# EOS or after max_new_tokens. tests/test_rollout_loop.py checks the logits against `generate`'s.

# generation_config.json fields that cannot change what `_hf_generate` samples: token ids and
# flags it overrides or that only shape its outputs. Any other field (top_k, repetition_penalty,
# min_length, ...) would add a logits processor: such models sample with "generate".
_PLAIN_GENERATION_FIELDS = {"bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "use_cache",
                            "output_attentions", "output_hidden_states", "_from_model_config", "transformers_version",
                            "do_sample", "max_length", "max_new_tokens", "temperature", "top_p"}


def _inner(model):
    """The transformers model under a peft wrapper (its LoRA layers stay active)."""
    return model.get_base_model() if is_peft(model) else model


def loop_supported(model) -> bool:
    """Whether `sample_loop` feeds this model what `generate` would: a decoder-only transformers
    model whose forward takes `cache`, `position_ids` and `logits_to_keep`, whose default cache is
    a DynamicCache of plain (full-attention) layers, with no extra processors in its generation config."""
    inner = _inner(model)
    config = getattr(inner, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False) or not hasattr(inner, "generation_config"):
        return False
    if not {"cache", "position_ids", "logits_to_keep"} <= inspect.signature(inner.forward).parameters.keys():
        return False
    supports = getattr(inner, "_supports_default_dynamic_cache", None)
    if supports is None or not supports() or inner.generation_config.cache_implementation is not None:
        return False
    if set(inner.generation_config.to_diff_dict()) - _PLAIN_GENERATION_FIELDS:
        return False
    experts = getattr(inner, "get_experts_implementation", None)  # generate switches MoE kernels on GPUs
    if experts is not None and "grouped_mm" in experts().values():
        return False
    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=config).layers)


def warpers(params: SamplingParams) -> list:
    """The logits warpers `generate` applies when sampling, in its order, with its conditions."""
    out = []
    if params.temperature != 1.0:
        out.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k:
        out.append(TopKLogitsWarper(top_k=params.top_k))
    if params.top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=params.top_p))
    return out


def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: one token per row of `probs` (b, V) from uniforms `u` (b, 1) in [0, 1).

    With c = cumsum(probs) in float64, row i gets the k with c[k-1] <= u_i * c[V-1] < c[k]: token k
    with probability probs[k] / sum(probs), the distribution `torch.multinomial` samples, to float64
    rounding (~V * 1e-16). A token of probability 0 (cut by top-k / top-p) has an empty interval and
    is never drawn; the target is kept below c[V-1] so the index stays in range."""
    c = probs.double().cumsum(-1)  # (b, V)
    total = c[:, -1:]
    if not bool((torch.isfinite(total) & (total > 0)).all()):
        raise RuntimeError("probability tensor contains either inf, nan or no positive entry")
    x = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(c, x, right=True).squeeze(-1)


def sample_loop(model, input_ids: torch.Tensor, attention: torch.Tensor, params: SamplingParams, eos: int,
                pad: int) -> torch.Tensor:
    """New tokens (b, n), n <= max_new_tokens, as `generate` returns them: pad after a row's EOS."""
    inner = _inner(model)
    b, p = input_ids.shape
    cache = DynamicCache(config=inner.config)
    cache.layers = [PreallocatedLayer(p + params.max_new_tokens) for _ in cache.layers]
    padded = not bool((attention == 1).all())
    mask = torch.cat([attention, attention.new_ones(b, params.max_new_tokens)], 1)  # (b, p + max_new_tokens)
    position = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 0)  # (b, p)
    tokens = input_ids.new_full((b, params.max_new_tokens), pad)
    alive = torch.ones(b, dtype=torch.bool, device=input_ids.device)
    step_warpers = warpers(params) if params.temperature > 0 else []
    out = inner(input_ids=input_ids, cache=cache, position_ids=position, logits_to_keep=1, use_cache=True,
                return_dict=True, **({"attention_mask": attention} if padded else {}))
    position = position[:, -1:]
    for t in range(params.max_new_tokens):
        scores = out.logits[:, -1].float()  # (b, V)
        for w in step_warpers:
            scores = w(None, scores)
        if params.temperature > 0:
            u = torch.rand((b, 1), dtype=torch.float64, device=scores.device)
            new = draw(torch.softmax(scores, dim=-1), u)
        else:
            new = torch.argmax(scores, dim=-1)
        new = torch.where(alive, new, pad)  # (b,)
        tokens[:, t] = new
        alive &= new != eos
        if t + 1 == params.max_new_tokens or not bool(alive.any()):
            return tokens[:, : t + 1]
        position = position + 1
        out = inner(input_ids=new[:, None], cache=cache, position_ids=position, logits_to_keep=1, use_cache=True,
                    return_dict=True, **({"attention_mask": mask[:, : p + t + 1]} if padded else {}))
    return tokens[:, :0]  # max_new_tokens == 0


class PreallocatedLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views of buffers sized once for the whole generation:
    attention sees the same (b, heads, length, dim) tensors, written in place instead of
    re-concatenated (a copy of the whole cache per layer per step)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h = key_states.shape[:2]
        self.device, self.is_initialized = key_states.device, True
        self._k = key_states.new_empty(b, h, self.capacity, key_states.shape[-1])
        self._v = value_states.new_empty(b, h, self.capacity, value_states.shape[-1])

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        self._k[:, :, self.length : end] = key_states
        self._v[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values


def _cut(prompt: list[int], row: list[int], eos: int, tokenizer, stop: str | None) -> Sample:
    finished = eos in row
    ids = row[: row.index(eos) + 1] if finished else row
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if stop and stop in text:
        # Re-encode the text up to the stop string; it ends the response like an EOS would.
        text = text[: text.index(stop) + len(stop)]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
        finished = True
    return Sample(prompt, ids, finished, text)


# ----------------------------------------------------------------------------- backends
# PPO samples with whatever backend it is given and recomputes every log-prob with the trainer's
# own forward pass, so a backend only has to return token ids with the conventions above (cut at
# the first EOS, `finished`, optional stop string). After each optimizer update the trainer calls
# `sync_weights(model)` so the next rollout samples from the current policy.


class GenerationBackend(Protocol):
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, batch_size: int = 64,
                 seed: int | None = None) -> list[Sample]: ...

    def sync_weights(self, model) -> None: ...


class HFBackend:
    """`generate` above on the live trainer model: `sync_weights` is a no-op, the weights are shared.
    Build it over the unwrapped model (`accelerator.unwrap_model(policy)`), not the DDP wrapper.
    `engine`: "loop" (backend "hf") or "generate" (backend "hf_generate")."""

    def __init__(self, model, tokenizer, engine: Engine = "loop"):
        self.model, self.tokenizer, self.engine = model, tokenizer, engine

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, batch_size: int = 64,
                 seed: int | None = None) -> list[Sample]:
        return generate(self.model, self.tokenizer, prompt_ids, params, batch_size, generator_seed=seed,
                        engine=self.engine)

    def sync_weights(self, model) -> None:
        pass


VLLM_HINT = "install rlhfkit[vllm] on a CUDA machine"


class VLLMBackend:
    """Sampling with a vLLM engine in the trainer's process (one GPU, tensor parallel 1).

    Targets vLLM 0.22-0.31, the range TRL 1.16's colocate mode supports, and its weight path:
    the V1 engine core is kept in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) so that
    `llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(...)` reaches
    the engine's weights (the older `driver_worker.worker.model_runner` path is tried too).
    Not exercised on a real engine in CI (no GPU); see tests/test_rollout_backend.py. `model_path_or_model` is an HF folder or a live model (saved to a
    temporary folder for the engine to load). vLLM's sampler differs from HF's, so the same seed
    gives other samples; the trainer recomputes log-probs itself, so only the ids matter.
    """

    def __init__(self, model_path_or_model, tokenizer, gpu_memory_utilization: float = 0.3,
                 dtype: str = "auto", max_model_len: int | None = None, **llm_kwargs):
        if importlib.util.find_spec("vllm") is None:
            raise ImportError(f"the vllm generation backend needs vLLM, which is not installed: {VLLM_HINT}")
        if not torch.cuda.is_available():
            raise RuntimeError(f"the vllm generation backend needs a CUDA GPU and none is available: {VLLM_HINT}")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in-process: weights reachable
        import vllm

        self.tokenizer, self._tmp = tokenizer, None
        path = model_path_or_model
        if not isinstance(path, (str, os.PathLike)):
            from rlhfkit.models.loading import save_hf
            from rlhfkit.train.shard import unsharded

            self._tmp = tempfile.TemporaryDirectory(prefix="rlhfkit-vllm-")
            save_hf(unsharded(model_path_or_model), tokenizer, Path(self._tmp.name))  # LoRA: the merged model
            path = self._tmp.name
        self.llm = vllm.LLM(model=str(path), tokenizer=str(path), dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                            max_model_len=max_model_len, enable_prefix_caching=False, trust_remote_code=False, **llm_kwargs)
        self._vllm = vllm

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, batch_size: int = 64,
                 seed: int | None = None) -> list[Sample]:
        """`batch_size` is ignored: vLLM schedules its own batches. With a seed, prompt i samples
        with seed + i, so a resumed run draws the same responses."""
        eos = self.tokenizer.eos_token_id
        sp = [self._vllm.SamplingParams(**vllm_sampling_kwargs(params, eos, None if seed is None else seed + i))
              for i in range(len(prompt_ids))]
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompt_ids], sampling_params=sp, use_tqdm=False)
        return samples_from_vllm(prompt_ids, outputs, self.tokenizer, params.stop)

    def sync_weights(self, model) -> None:
        """Load the trainer's current weights (HF names; LoRA merged) into the engine."""
        engine_model = vllm_engine_model(self.llm)
        engine_model.load_weights(hf_weights(model))
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights


def vllm_sampling_kwargs(params: SamplingParams, eos: int, seed: int | None) -> dict:
    """vllm.SamplingParams arguments matching HF `generate`: stop at EOS only (a stop string is cut
    by `_cut`, as on the HF path), top_k 0 = off (vLLM says -1); texts are decoded by `_cut`."""
    return dict(n=1, max_tokens=params.max_new_tokens, temperature=params.temperature,
                top_k=params.top_k if params.top_k > 0 else -1, top_p=params.top_p, seed=seed,
                stop_token_ids=[eos], ignore_eos=False, detokenize=False,
                logprobs=0)  # the sampled token's log-prob, for truncated importance sampling


def samples_from_vllm(prompt_ids: list[list[int]], outputs, tokenizer, stop: str | None) -> list[Sample]:
    """vLLM `RequestOutput`s (one completion each, in prompt order) -> `Sample`s, HF conventions.

    vLLM ends a completion that hit EOS with finish_reason "stop"; some versions leave the EOS id
    out of `token_ids`, so it is put back before the common cut."""
    eos = tokenizer.eos_token_id
    out = []
    for prompt, req in zip(prompt_ids, outputs, strict=True):
        comp = req.outputs[0]
        row = list(comp.token_ids)
        logprobs = _sampled_logprobs(getattr(comp, "logprobs", None), row)
        if comp.finish_reason == "stop" and eos not in row:
            row.append(eos)
        smp = _cut(list(prompt), row, eos, tokenizer, stop)
        if logprobs is not None and len(logprobs) >= len(smp.response_ids) and not (stop and stop in smp.text):
            smp.logprobs = logprobs[: len(smp.response_ids)]  # a stop-string cut re-encodes: no sampler log-probs
        out.append(smp)
    return out


def _sampled_logprobs(per_position, ids: list[int]) -> list[float] | None:
    """vLLM's per-position {token id: Logprob} dicts -> the sampled tokens' log-probs (None if absent)."""
    if not per_position or len(per_position) < len(ids):
        return None
    out = []
    for d, tok in zip(per_position, ids, strict=False):
        lp = d.get(tok) if d else None
        if lp is None:
            return None
        out.append(float(getattr(lp, "logprob", lp)))
    return out


def vllm_engine_model(llm):
    """The engine's torch model (in-process engine; the attribute path moved between versions)."""
    executor = getattr(llm.llm_engine, "model_executor", None)
    worker = getattr(executor, "driver_worker", None)
    for runner in (getattr(worker, "model_runner", None), getattr(getattr(worker, "worker", None), "model_runner", None)):
        if runner is not None and hasattr(runner, "model"):
            return runner.model
    raise RuntimeError("cannot reach the vLLM engine's model to sync weights; run with VLLM_ENABLE_V1_MULTIPROCESSING=0 "
                       "and a single GPU (tensor_parallel_size=1)")


def hf_weights(model) -> list[tuple[str, torch.Tensor]]:
    """(HF checkpoint name, tensor) pairs for `load_weights`; a peft LoRA model merged (copies:
    `models.loading.merged_weights` unmerges it again), as `save_hf` writes it."""
    from rlhfkit.models.loading import is_peft, merged_weights
    from rlhfkit.train.shard import unsharded

    model = unsharded(model)  # train.sharding=fsdp: the full weights gathered from the shards
    with merged_weights(model) as state:
        copy = is_peft(model)  # merged values must survive the unmerge
        return [(k, v.detach().clone() if copy else v.detach()) for k, v in state.items()]


BACKENDS = {"hf": HFBackend, "hf_generate": partial(HFBackend, engine="generate"), "vllm": VLLMBackend}


def make_backend(name: str, model, tokenizer, **opts) -> GenerationBackend:
    """The generation backend called `name` over `model`: "hf" (rlhfkit's sampling loop, transformers'
    generate for models it does not cover), "hf_generate" (always transformers' generate) or "vllm";
    `opts` go to its constructor (vllm: gpu_memory_utilization, dtype, max_model_len, other vllm.LLM
    arguments)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown generation backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name.startswith("hf") and opts:
        raise ValueError(f"the {name} generation backend takes no options, got {sorted(opts)}")
    return BACKENDS[name](model, tokenizer, **opts)
