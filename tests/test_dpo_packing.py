"""DPO's sequence packing is exact on every architecture, or not used.

Packed rows hold several sequences; `models.packing.sequence_logps` passes a block-diagonal causal mask (eager,
sdpa) or one row of restarting position_ids (flash-attention), and `packing_problem` sends the
architectures it cannot keep apart (no position_ids, non-attention layers, a short sliding
window, other attention kernels) to padding, as does a failing `check_packing`.

Tolerance, used throughout (the one `check_packing` states): a token's log p = z_y - logsumexp(z)
has terms of size <= max|z| + log V. Packed, padded and alone runs do the same float32 maths in
other reduction orders, so each term may move by rounding; we allow 2^10 units of roundoff
(u = 2^-24) of (2 max|z| + log V) per response token, summed over the sequence: ~1.5e-3 nats a
sequence here. Measured on these tiny near-uniform models: packed runs stay below 1/400 of it; a
leak (each test's control) moves some sequence by 4e-2..2.6e-1 nats, 25-170 times it.
"""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from conftest import build_word_tokenizer, write_jsonl
from test_dpo_recipe import random_comparisons
from test_models_dropout import ARCHS, build_dropout_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhfkit import cli
from rlhfkit.losses.logprobs import token_logps
from rlhfkit.models import packing
from rlhfkit.models.loading import disable_dropout
from rlhfkit.recipes import dpo

CAPACITY = 64
PACK = functools.partial(dpo.pack_pairs, pad_token_id=0)
U, ULPS = 2.0**-24, 2.0**10


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    tok = build_word_tokenizer(folder)
    pairs = dpo.encode_pairs(tok, write_jsonl(folder / "c.jsonl", random_comparisons(16, seed=0)), "all", CAPACITY)
    return tok, pairs[:12]


def _model(folder, arch, attn="sdpa", **config):
    build_dropout_model(folder, arch)
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation=attn, **config).eval()
    disable_dropout(model)
    return model


@torch.no_grad()
def alone(model, pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """Each of the 2m sequences in a forward of its own (no padding, no neighbours): its response
    log-prob and its tolerance (module docstring), both (2m,)."""
    logps, tols = [], []
    for side in ("chosen", "rejected"):
        for p in pairs:
            ids = torch.tensor([p["prompt"] + p[side]])
            labels = torch.tensor([[-100] * len(p["prompt"]) + p[side]])[:, 1:]
            logits = model(input_ids=ids).logits[:, :-1].float()
            logps.append(token_logps(logits, labels).sum())
            size = 2 * logits.abs().amax(-1) + math.log(logits.shape[-1])
            tols.append(ULPS * U * size[labels >= 0].sum())
    return torch.stack(logps), torch.stack(tols)


@torch.no_grad()
def packed(model, pairs, capacity=CAPACITY) -> torch.Tensor:
    batch = dpo.pack_pairs(pairs, 0, capacity)
    if capacity is not None:
        assert batch["input_ids"].shape[0] < 2 * len(pairs)  # sequences do share rows
    return packing.sequence_logps(model, batch)[0]


@torch.no_grad()
def leaky(model, pairs) -> torch.Tensor:
    """The control: packed rows under plain causal attention (a 2D all-ones mask turns off any
    packing detection), position_ids restarting. A test model that leaks here detectably shows
    its test could fail."""
    batch = dpo.pack_pairs(pairs, 0, CAPACITY)
    logits = model(input_ids=batch["input_ids"], attention_mask=torch.ones_like(batch["input_ids"]),
                   position_ids=batch["position_ids"]).logits
    labels = batch["labels"][:, 1:].masked_fill(batch["seq_index"][:, 1:] != batch["seq_index"][:, :-1], -100)
    return packing.per_sequence(token_logps(logits[:, :-1], labels), batch["seq_index"][:, 1:], batch["n"])


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHS)
def test_packed_and_padded_logps_equal_each_sequence_alone(tmp_path, data, arch, attn):
    tok, pairs = data
    model = _model(tmp_path / arch, arch, attn)
    want, tol = alone(model, pairs)
    assert packing.packing_problem(model, CAPACITY) is None
    assert ((packed(model, pairs) - want).abs() <= tol).all()
    assert ((packed(model, pairs, None) - want).abs() <= tol).all()
    assert ((leaky(model, pairs) - want).abs() > tol).any()  # control
    assert packing.check_packing(model, pairs, PACK, CAPACITY, 4) is None


# ----------------------------------------------------------------------------- flash-attention


def _fake_flash_kernels():
    """flash_attn's two entry points on CPU, so transformers' own flash-attention path
    (`_flash_attention_forward`) runs: `flash_fn` is plain causal attention over each row,
    `varlen_fn` causal attention within each [cu_seqlens[i], cu_seqlens[i+1]) segment."""

    def attend(q, k, v, scale):  # (B, T, H, D); kv heads repeated for grouped-query attention
        k, v = (x.repeat_interleave(q.shape[2] // x.shape[2], dim=2) for x in (k, v))
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, scale=scale)
        return out.transpose(1, 2)

    def flash_fn(q, k, v, dropout_p=0.0, softmax_scale=None, causal=True):
        assert causal
        return attend(q, k, v, softmax_scale)

    def varlen_fn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None, dropout_p=0.0,
                  softmax_scale=None, causal=True):  # (N, H, D)
        assert causal and torch.equal(cu_seqlens_q, cu_seqlens_k)
        bounds = cu_seqlens_q.tolist()
        return torch.cat([attend(q[None, a:b], k[None, a:b], v[None, a:b], softmax_scale)[0]
                          for a, b in zip(bounds[:-1], bounds[1:], strict=True)])

    return flash_fn, varlen_fn


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_flash_attention_gets_one_row_of_restarting_positions(tmp_path, data, arch, monkeypatch):
    """Under flash-attention transformers keeps packed sequences apart only for a batch of ONE
    row (it reads the boundaries from position_ids); rows of several sequences went through the
    plain kernel and leaked (the control). Real kernels need a GPU: these CPU stand-ins compute
    the same function, so only the layout is under test."""
    from transformers import modeling_flash_attention_utils as fa
    from transformers.modeling_flash_attention_utils import _pad_input, _unpad_input

    tok, pairs = data
    model = _model(tmp_path / arch, arch)
    want, tol = alone(model, pairs)  # sdpa
    flash_fn, varlen_fn = _fake_flash_kernels()
    monkeypatch.setattr(fa, "_lazy_imports", lambda *a, **k: (flash_fn, varlen_fn, None, _pad_input, _unpad_input))
    monkeypatch.setattr(fa, "_loaded_implementation", None)
    monkeypatch.setattr(model.config, "_attn_implementation", "flash_attention_2")
    assert packing.packing_problem(model, CAPACITY) is None
    assert ((packed(model, pairs) - want).abs() <= tol).all()
    assert ((packed(model, pairs, None) - want).abs() <= tol).all()  # padded: transformers unpads
    several_rows = dpo.pack_pairs(pairs, 0, CAPACITY)  # the layout before: rows, no mask
    with torch.no_grad():
        logits = model(input_ids=several_rows["input_ids"], position_ids=several_rows["position_ids"]).logits
    first = several_rows["seq_index"][0]  # row 0 holds several sequences: the later ones leak
    later = int(first[first >= 0][-1])
    labels = several_rows["labels"][0, 1:].masked_fill(first[1:] != later, -100)
    assert (token_logps(logits[0, :-1], labels).sum() - want[later]).abs() > tol[later]  # control


# ----------------------------------------------------------------------------- fall back by architecture


def test_sliding_window_shorter_than_a_sequence_pads(tmp_path, data):
    """Mistral with a window of 4 tokens: the block mask alone would let a token see its whole
    sequence (the control: forced packing differs), so packing is off; a window no shorter than
    data.max_length never bites inside a sequence, so packing stays on."""
    tok, pairs = data
    model = _model(tmp_path / "mistral", "mistral", sliding_window=4)
    assert "sliding-window" in packing.packing_problem(model, CAPACITY)
    want, tol = alone(model, pairs)
    assert ((packed(model, pairs, None) - want).abs() <= tol).all()
    assert ((packed(model, pairs) - want).abs() > tol).any()  # control
    model.config.sliding_window = CAPACITY
    assert packing.packing_problem(model, CAPACITY) is None


def test_models_that_cannot_be_kept_apart_pad(tmp_path, data):
    """BLOOM takes no position_ids (ALiBi offsets come from the 2D mask); a layer that is not
    attention carries state along the row; an attention kernel with no exact layout here."""
    from transformers import BloomConfig, BloomForCausalLM

    tok, _ = data
    bloom = BloomForCausalLM(BloomConfig(vocab_size=len(tok), hidden_size=32, n_layer=2, n_head=2))
    assert "takes no position_ids" in packing.packing_problem(bloom, CAPACITY)
    llama = _model(tmp_path / "llama", "llama")
    llama.config.layer_types = ["full_attention", "linear_attention"]
    assert "linear_attention layers" in packing.packing_problem(llama, CAPACITY)
    llama.config.layer_types = None
    llama.config._attn_implementation = "flex_attention"
    assert "'flex_attention'" in packing.packing_problem(llama, CAPACITY)


# ----------------------------------------------------------------------------- the check, the recipe


def ignore_masks(forward):
    """`forward`, made to ignore every attention mask (plain causal attention over each row):
    padded rows are still right (right padding comes after the tokens), packed ones leak."""
    def attends_across(input_ids=None, attention_mask=None, position_ids=None, **kw):
        return forward(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), position_ids=position_ids, **kw)

    return attends_across


def test_check_packing_compares_every_sequence(tmp_path, data):
    """The leak shows up in the last of three chunks only (the first 8 pairs are left intact), so
    a check of the first pairs alone would pass."""
    tok, pairs = data
    model = _model(tmp_path / "gpt2", "gpt2")
    assert packing.check_packing(model, pairs, PACK, CAPACITY, 4) is None
    forward, leaking, calls = model.forward, ignore_masks(model.forward), []

    def late_leak(*args, **kw):  # per chunk: the packed pass, then the padded one
        calls.append(1)
        return (leaking if len(calls) == 5 else forward)(*args, **kw)

    model.forward = late_leak
    why = packing.check_packing(model, pairs, PACK, CAPACITY, 4)
    assert len(calls) == 6 and "leaks between packed sequences" in why and "float32 tolerance" in why


def _run(tmp_path, name, model, pairs, *sets):
    out = tmp_path / name
    args = [f"model.name_or_path={model}", f"data.train={pairs}", "data.eval=null", "sampling.prompts=null",
            "sampling.text=null", "train.batch_size=8", "train.micro_batch_size=4", "train.max_steps=1",
            "log.save_every=0", "log.progress=false", f"beta={BETA}", *sets]
    assert cli.main(["dpo", "--out", str(out), *[x for a in args for x in ("--set", a)]]) == 0
    return json.loads((out / "metrics.jsonl").read_text().split("\n")[0])


BETA = 0.5


def _first_step_tolerances(folders, pairs_file) -> dict[str, float]:
    """Each logged metric's bound from the per-sequence tolerance t (module docstring) of the
    worst sequence under policy or reference: logps/* are pair means of one log-prob each (t);
    rewards/chosen|rejected of beta * (policy - reference) (2 beta t); the margin and the loss of
    four log-probs, the loss through -log sigmoid, whose slope is below 1 (4 beta t)."""
    pairs = dpo.encode_pairs(AutoTokenizer.from_pretrained(folders[0]), pairs_file, "all", 128)
    t = max(alone(AutoModelForCausalLM.from_pretrained(f).eval(), pairs)[1].max().item() for f in folders)
    return {"logps/chosen": t, "logps/rejected": t, "rewards/chosen": 2 * BETA * t, "rewards/rejected": 2 * BETA * t,
            "rewards/margin": 4 * BETA * t, "loss/dpo": 4 * BETA * t}


@pytest.mark.parametrize("arch", ["qwen2", "opt"])
def test_dpo_packed_first_step_equals_padded(tmp_path, capsys, arch):
    """Through the CLI, packing on (the default) and off: the same first-step loss and metrics to
    the derived tolerance, and the same accuracy: the reference is another model (weights
    perturbed), so margins are far from 0 and accuracy, a step function of them, does not flip.
    (OPT leaked here before: it never gave its position_ids to transformers' mask builder.)"""
    policy, ref = build_dropout_model(tmp_path / "policy", arch), build_dropout_model(tmp_path / "ref", arch)
    other, gen = AutoModelForCausalLM.from_pretrained(ref), torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    other.save_pretrained(ref)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", random_comparisons(6, seed=2))
    on = _run(tmp_path, "on", policy, pairs, f"ref_model={ref}")
    assert "packing off" not in capsys.readouterr().out
    off = _run(tmp_path, "off", policy, pairs, f"ref_model={ref}", "data.packing=false")
    for key, tol in _first_step_tolerances([policy, ref], pairs).items():
        assert abs(on[key] - off[key]) <= tol, (key, on[key], off[key], tol)
    assert on["rewards/accuracy"] == off["rewards/accuracy"]


def test_a_model_that_leaks_falls_back_to_padding_in_one_line(tmp_path, capsys, monkeypatch):
    """A model that attends across packed sequences although its architecture says it would not:
    the check catches it, one printed line says so, and the run trains padded: the same first
    step as with data.packing=false (to the derived tolerance: the masks differ, not the maths)."""
    model = build_dropout_model(tmp_path / "gpt2", "gpt2")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", random_comparisons(6, seed=2))
    off = _run(tmp_path, "off", model, pairs, "data.packing=false")
    real = dpo.load_policy

    def leaky_policy(*a, **k):
        policy = real(*a, **k)
        policy.forward = ignore_masks(policy.forward)
        return policy

    monkeypatch.setattr(dpo, "load_policy", leaky_policy)
    capsys.readouterr()
    on = _run(tmp_path, "on", model, pairs)
    out, err = capsys.readouterr()
    lines = [x for x in out.split("\n") if "packing off" in x]
    assert len(lines) == 1 and "leaks between packed sequences" in lines[0], out
    assert "Traceback" not in err
    for key, tol in _first_step_tolerances([model], pairs).items():
        assert abs(on[key] - off[key]) <= tol, (key, on[key], off[key], tol)
