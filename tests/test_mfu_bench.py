"""benchmarks/mfu.py: the FLOP count and the forward/loss split its MFU numbers rest on."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from conftest import build_tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import mfu  # noqa: E402


def test_linear_weights_count_every_linear_layer_not_embeddings(tmp_path):
    """N for 6·N·D, by hand for the tiny GPT-2 (2 layers, width d = 32, vocabulary V):
    per layer c_attn d·3d + attn c_proj d·d + c_fc d·4d + mlp c_proj 4d·d = 12·d² = 12,288,
    plus the (tied) LM head V·d; the token and position embeddings (lookups) and every bias and
    norm are not counted. Exact integer arithmetic, so equality."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "m"))
    v = model.config.vocab_size
    n, layers, width = mfu.linear_weights(model)
    assert (layers, width) == (2, 32)
    assert n == 2 * 12 * 32 * 32 + v * 32
    # the embeddings are there, just not counted: counting every parameter would give more
    assert sum(p.numel() for p in model.parameters()) > n + 128 * 32


class _Slow(torch.nn.Module):
    def forward(self, x):
        time.sleep(0.2)
        return x


def test_split_charges_model_forward_to_forward_and_the_rest_to_loss():
    """Inside the `fwd+loss` bucket, time spent in a watched model's forward goes to `forward`
    (hooks) and the remainder to `loss`. The model sleeps 0.2 s, the code after it 0.1 s: sleeps
    never end early, so forward >= 0.2 and loss >= 0.1 whatever the load; without the hooks
    forward would be 0. The two add up to the bucket's elapsed time (same clock)."""
    split, model = mfu.Split(), _Slow()
    split.watch(model)
    t0 = time.perf_counter()
    with split("fwd+loss"):
        model(torch.zeros(1))
        time.sleep(0.1)
    elapsed = time.perf_counter() - t0
    assert split.wall["forward"] >= 0.2
    assert split.wall["loss"] >= 0.1
    assert split.wall["forward"] + split.wall["loss"] <= elapsed
    with split("backward"):  # any other bucket is charged whole
        time.sleep(0.05)
    assert split.wall["backward"] >= 0.05 and "fwd+loss" not in split.wall
