"""PPO maths against numbers worked by hand (derivations in the docstrings)."""

import math

import pytest
import torch

from rlhfkit.losses.kl_control import KLController
from rlhfkit.losses.ppo import (
    adaptive_beta,
    explained_variance,
    gae,
    kl_per_token,
    policy_loss,
    token_rewards,
    value_loss,
    whiten,
)


def _close(actual, expected):
    torch.testing.assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-6)


def test_gae_by_hand_full_row():
    """T=3, rewards [0, 0, 1], V = 0.5 everywhere, gamma = 1, lam = 0.5.

    delta_2 = 1 + 0 - 0.5 = 0.5 (no V after the last token); delta_1 = delta_0 = 0 + 0.5 - 0.5 = 0.
    A_2 = 0.5, A_1 = 0 + 0.5 * 0.5 = 0.25, A_0 = 0 + 0.5 * 0.25 = 0.125; returns = A + V.
    """
    adv, ret = gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.full((1, 3), 0.5), torch.ones(1, 3), gamma=1.0, lam=0.5)
    _close(adv, [[0.125, 0.25, 0.5]])
    _close(ret, [[0.625, 0.75, 1.0]])


def test_gae_by_hand_padded_row_ignores_values_after_the_end():
    """mask [1, 1, 0], rewards [0, 2, 5], V [1, 1, 9], gamma = 0.9, lam = 1.

    The padded position's reward 5 and value 9 must not leak in: V after the last token is 0.
    delta_1 = 2 + 0.9*0 - 1 = 1; delta_0 = 0 + 0.9*1 - 1 = -0.1.
    A_1 = 1; A_0 = -0.1 + 0.9*1 = 0.8; A_2 = 0. returns = [1.8, 2.0, 0] (lam = 1: the discounted
    reward-to-go, 0.9 * 2 = 1.8).
    """
    adv, ret = gae(torch.tensor([[0.0, 2.0, 5.0]]), torch.tensor([[1.0, 1.0, 9.0]]), torch.tensor([[1, 1, 0]]), gamma=0.9, lam=1.0)
    _close(adv, [[0.8, 1.0, 0.0]])
    _close(ret, [[1.8, 2.0, 0.0]])


def _gae_loop(rewards, values, mask, gamma, lam):
    """The textbook backward recursion, one row and one step at a time (the reference)."""
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        n = int(mask[b].sum())
        last = 0.0
        for t in reversed(range(n)):
            next_v = values[b, t + 1].item() if t + 1 < n else 0.0
            delta = rewards[b, t].item() + gamma * next_v - values[b, t].item()
            last = delta + gamma * lam * last
            adv[b, t] = last
    ret = (adv + values.double()) * mask
    return adv, ret


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (0.5, 0.0), (1.0, 1.0)])
def test_gae_vectorised_equals_the_loop(gamma, lam):
    torch.manual_seed(0)
    B, T = 5, 17
    lengths = torch.tensor([17, 1, 9, 4, 12])
    mask = (torch.arange(T)[None] < lengths[:, None]).double()
    rewards = torch.randn(B, T, dtype=torch.float64)
    values = torch.randn(B, T, dtype=torch.float64)
    adv, ret = gae(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = _gae_loop(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, ref_adv, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ret, ref_ret, rtol=1e-10, atol=1e-10)


def test_clipped_surrogate_by_hand():
    """eps = 0.2, four tokens (ratio, A) and L = max(-A r, -A clip(r, 0.8, 1.2)):

      (1.5, +1): max(-1.5, -1.2) = -1.2  clipped     (0.5, +1): max(-0.5, -0.8) = -0.5
      (1.5, -2): max( 3.0,  2.4) =  3.0              (0.5, -2): max( 1.0,  1.6) =  1.6  clipped
    loss = (-1.2 - 0.5 + 3.0 + 1.6) / 4 = 0.725, clipfrac = 2/4.
    approx_kl = mean((r - 1) - ln r) = (2 (0.5 - ln 1.5) + 2 (-0.5 + ln 2)) / 4.
    Gradient d loss / d logp_t = -A r / 4 where unclipped, 0 where clipped.
    """
    old = torch.zeros(1, 4)
    logps = torch.log(torch.tensor([[1.5, 0.5, 1.5, 0.5]])).requires_grad_()
    adv = torch.tensor([[1.0, 1.0, -2.0, -2.0]])
    loss, m = policy_loss(logps, old, adv, torch.ones(1, 4), clip_eps=0.2)
    assert loss.item() == pytest.approx(0.725, abs=1e-6)
    assert m["clipfrac"].item() == pytest.approx(0.5)
    expected_kl = (2 * (0.5 - math.log(1.5)) + 2 * (-0.5 + math.log(2.0))) / 4
    assert m["approx_kl"].item() == pytest.approx(expected_kl, abs=1e-6)
    loss.backward()
    _close(logps.grad, [[0.0, -0.5 / 4, 3.0 / 4, 0.0]])


def test_surrogate_ignores_padding_and_uses_the_global_normaliser():
    """Padding tokens carry huge advantages that must not count; normalizer 4 halves a
    2-token loss (the other 2 tokens of the global batch live in another micro-batch)."""
    old = torch.zeros(1, 3)
    logps = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, 3.0, 1e6]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, _ = policy_loss(logps, old, adv, mask)
    assert loss.item() == pytest.approx(-2.0)  # ratio 1: -(1 + 3) / 2
    loss4, _ = policy_loss(logps, old, adv, mask, normalizer=4)
    assert loss4.item() == pytest.approx(-1.0)


def test_clipped_value_loss_by_hand():
    """eps = 0.2, L = 0.5 max((V - R)^2, (V_old + clip(V - V_old, -0.2, 0.2) - R)^2):

      V_old 1, V 1.5, R 2: (0.5)^2 = 0.25 vs (1.2 - 2)^2 = 0.64 -> 0.32  (clipped)
      V_old 1, V 1.1, R 2: 0.81 vs 0.81                          -> 0.405
      V_old 1, V 0.5, R 0: 0.25 vs (0.8 - 0)^2 = 0.64            -> 0.32  (clipped)
    mean = (0.32 + 0.405 + 0.32) / 3, clipfrac = 2/3.
    """
    loss, m = value_loss(torch.tensor([[1.5, 1.1, 0.5]]), torch.ones(1, 3), torch.tensor([[2.0, 2.0, 0.0]]), torch.ones(1, 3), clip_eps=0.2)
    assert loss.item() == pytest.approx((0.32 + 0.405 + 0.32) / 3, abs=1e-6)
    assert m["clipfrac"].item() == pytest.approx(2 / 3)


def test_kl_estimators_by_hand():
    """pi = 0.5, pi_ref = 0.25 at the sampled token: log r = ln(pi_ref / pi) = -ln 2.
    k1 = -log r = ln 2; k2 = (ln 2)^2 / 2; k3 = (r - 1) - log r = -0.5 + ln 2."""
    p, q = torch.log(torch.tensor([[0.5]])), torch.log(torch.tensor([[0.25]]))
    one = torch.ones(1, 1)
    assert kl_per_token(p, q, one, "k1").item() == pytest.approx(math.log(2))
    assert kl_per_token(p, q, one, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_per_token(p, q, one, "k3").item() == pytest.approx(-0.5 + math.log(2))
    with pytest.raises(ValueError, match="k4"):
        kl_per_token(p, q, one, "k4")


def test_k1_and_k3_are_unbiased_in_expectation():
    """sum_i p_i k(i) = KL(p || q) exactly for k1 and k3 (k2 is biased): p = [.5, .3, .2], q = [.2, .3, .5]."""
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.3, 0.5])
    kl = (p * (p / q).log()).sum().item()
    lp, lq, ones = p.log()[None], q.log()[None], torch.ones(1, 3)
    for est in ("k1", "k3"):
        assert (p * kl_per_token(lp, lq, ones, est)[0]).sum().item() == pytest.approx(kl, abs=1e-6)
    assert (p * kl_per_token(lp, lq, ones, "k2")[0]).sum().item() != pytest.approx(kl, abs=1e-3)


def test_token_rewards_by_hand():
    """beta 0.5, kl [[.1, .2, .3], [.5, -, -]], scores [2, -1]: -beta*kl on each token, score on the last."""
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    r = token_rewards(torch.tensor([2.0, -1.0]), kl, mask, beta=0.5)
    _close(r, [[-0.05, -0.1, -0.15 + 2.0], [-0.25 - 1.0, 0.0, 0.0]])


def test_whiten_by_hand():
    """[1, 2, 3] (4th masked): mean 2, population var 2/3 -> (x - 2) / sqrt(2/3)."""
    x = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    s = math.sqrt(2 / 3)
    _close(whiten(x, mask), [[-1 / s, 0.0, 1 / s, 0.0]])
    _close(whiten(x, mask, shift_mean=False), [[2 - 1 / s, 2.0, 2 + 1 / s, 0.0]])


def test_explained_variance_by_hand():
    """R = [1, 2, 3] (Var 2/3). V = R -> 1; V = 2 -> 0; V = [1.5, 2, 2.5]: R - V = [-.5, 0, .5],
    Var 1/6 -> 1 - (1/6)/(2/3) = 0.75."""
    r, m = torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(1, 3)
    assert explained_variance(r, r, m).item() == pytest.approx(1.0)
    assert explained_variance(torch.full((1, 3), 2.0), r, m).item() == pytest.approx(0.0, abs=1e-7)
    assert explained_variance(torch.tensor([[1.5, 2.0, 2.5]]), r, m).item() == pytest.approx(0.75)
    assert explained_variance(r, torch.ones(1, 3), m).item() == 0.0  # constant returns: defined as 0


def test_adaptive_kl_controller_step_by_hand():
    """beta 0.1, target 6, horizon 10000, 64 episodes: beta *= 1 + clip(kl/6 - 1, -.2, .2) * 64/10000.
    kl 9 -> error +0.5 clipped to +0.2 -> 0.100128; kl 3 -> -0.2 -> 0.099872; kl 6.6 -> +0.1 -> 0.100064."""
    assert adaptive_beta(0.1, 9.0, 6.0, 10_000, 64) == pytest.approx(0.100128)
    assert adaptive_beta(0.1, 3.0, 6.0, 10_000, 64) == pytest.approx(0.099872)
    assert adaptive_beta(0.1, 6.6, 6.0, 10_000, 64) == pytest.approx(0.100064)
    ctl = KLController(0.1, target=6.0, horizon=10_000)
    ctl.update(9.0, 64)
    saved = ctl.state_dict()
    again = KLController(0.1, target=6.0, horizon=10_000)
    again.load_state_dict(saved)
    assert again.beta == pytest.approx(0.100128)
    fixed = KLController(0.1)
    assert fixed.update(100.0, 64) == 0.1


def test_adaptive_controller_settles_kl_near_target():
    """A toy world where KL = c / beta (a stiffer penalty gives a smaller KL): the controller
    must drive KL to the target from both sides."""
    for beta0 in (0.01, 1.0):
        ctl = KLController(beta0, target=4.0, horizon=1000)
        for _ in range(400):
            ctl.update(0.2 / ctl.beta, 64)
        assert 0.2 / ctl.beta == pytest.approx(4.0, rel=0.02)
