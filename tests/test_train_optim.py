"""build_optimizer: torch's fused AdamW where every trainable parameter allows it, deterministic,
the same update as the for-loop kernel to float32 rounding; sharded parameters get the plain one."""

from __future__ import annotations

import torch

from rlhfkit.config import TrainConfig
from rlhfkit.train.optim import build_optimizer


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))


def _train(model, optimizer, steps: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        model(torch.randn(8, 16, generator=g)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_build_optimizer_is_fused_deterministic_and_matches_the_for_loop_kernel():
    """Fused on CPU float parameters (both groups: decay and no decay); two runs equal bit for bit
    (resume parity needs it). Against torch's for-loop AdamW on the same groups after 5 steps at
    lr 1e-2: both compute the same elementwise formula with other operation orders, a few units of
    float32 roundoff (u = 2^-24) of the update per step; each parameter moves by at most lr per step
    (Adam's |m/sqrt(v)| <= ~1), so 5 steps differ by at most 5 * 2^6 u * (|p| + 5 lr) per entry:
    2^6 u covers the dozen ops of one update with room."""
    cfg = TrainConfig(lr=1e-2, weight_decay=0.1)
    opt = build_optimizer(_model(), cfg)
    assert opt.defaults["fused"] and all(g["fused"] for g in opt.param_groups) and len(opt.param_groups) == 2
    a = _train(m := _model(), build_optimizer(m, cfg))
    b = _train(m := _model(), build_optimizer(m, cfg))
    assert torch.equal(a, b)
    m = _model()
    groups = [{k: v for k, v in g.items() if k != "fused"} for g in build_optimizer(m, cfg).param_groups]
    loop = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps, foreach=False)
    c = _train(m, loop)
    assert ((a - c).abs() <= 5 * 2**6 * 2.0**-24 * (c.abs() + 5 * cfg.lr)).all()


def test_parameters_the_fused_kernel_cannot_take_get_the_plain_one():
    """A non-floating trainable tensor is impossible, so the device rule is what is tested: a
    parameter on the meta device (no fused kernel) makes the whole optimizer plain."""
    model = _model()
    model[2].to("meta")
    opt = build_optimizer(model, TrainConfig())
    assert not opt.defaults["fused"]
