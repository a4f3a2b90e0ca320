"""DPO-family losses against numbers worked by hand.

Shared example (one pair), chosen in the docstrings below:
    policy  log pi(y_w) = -1,  log pi(y_l) = -3
    ref     log pi_ref(y_w) = -2, log pi_ref(y_l) = -2
so the log-ratios are c = +1, r = -1 and the margin h = c - r = 2.
Useful identities: -log sigma(x) = log(1 + e^-x) and log(1 + e) - log(1 + e^-1) = 1.
"""

import math

import pytest
import torch

from rlhfkit.losses.dpo import DPO_LOSSES, REFERENCE_FREE, preference_loss


def _pair(requires_grad=False):
    pc = torch.tensor([-1.0], requires_grad=requires_grad)
    pr = torch.tensor([-3.0], requires_grad=requires_grad)
    return pc, pr, torch.tensor([-2.0]), torch.tensor([-2.0])


def test_sigmoid_by_hand_with_gradient():
    """beta = 0.5: beta h = 1, L = log(1 + e^-1) = 0.313262.

    dL/d log pi(y_w) = -beta sigma(-beta h) = -0.5 * 0.268941 = -0.134471; the rejected
    gradient is the negative of that. Implicit rewards: 0.5 * (+1) and 0.5 * (-1).
    """
    pc, pr, rc, rr = _pair(requires_grad=True)
    loss, m = preference_loss("sigmoid", pc, pr, rc, rr, beta=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    loss.backward()
    assert pc.grad.item() == pytest.approx(-0.5 / (1 + math.e), abs=1e-6)
    assert pr.grad.item() == pytest.approx(0.5 / (1 + math.e), abs=1e-6)
    assert m["rewards/chosen"].item() == pytest.approx(0.5)
    assert m["rewards/rejected"].item() == pytest.approx(-0.5)
    assert m["rewards/margin"].item() == pytest.approx(1.0)
    assert m["rewards/accuracy"].item() == 1.0


def test_cdpo_by_hand():
    """eps = 0.1, beta = 0.5 (beta h = 1):
    L = 0.9 log(1 + e^-1) + 0.1 log(1 + e) = log(1 + e^-1) + 0.1 * 1 = 0.413262.
    eps = 0 is plain DPO."""
    pc, pr, rc, rr = _pair()
    loss, _ = preference_loss("cdpo", pc, pr, rc, rr, beta=0.5, label_smoothing=0.1)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)) + 0.1, abs=1e-6)
    plain, _ = preference_loss("cdpo", pc, pr, rc, rr, beta=0.5, label_smoothing=0.0)
    assert plain.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_cdpo_minimum_is_finite():
    """d/dh [-(1-e) log s(bh) - e log s(-bh)] = -b(1-e) s(-bh) + b e s(bh) = 0
    at s(bh) = 1 - e, i.e. h* = log((1-e)/e)/b = log 9 / 0.5 = 4.394449 for e = 0.1."""
    h_star = math.log(9) / 0.5
    h = torch.tensor([h_star], requires_grad=True)
    loss, _ = preference_loss("cdpo", h, torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=0.5, label_smoothing=0.1)
    loss.backward()
    assert h.grad.item() == pytest.approx(0.0, abs=1e-6)


def test_ipo_by_hand():
    """tau = 0.5: target 1/(2 tau) = 1, L = (2 - 1)^2 = 1, dL/dh = 2 (h - 1) = 2.
    tau = 0.25: target 2 = h, so L = 0 and the gradient vanishes."""
    pc, pr, rc, rr = _pair(requires_grad=True)
    loss, _ = preference_loss("ipo", pc, pr, rc, rr, beta=0.5)
    assert loss.item() == pytest.approx(1.0, abs=1e-6)
    loss.backward()
    assert pc.grad.item() == pytest.approx(2.0, abs=1e-6)
    loss, _ = preference_loss("ipo", *_pair(), beta=0.25)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_hinge_by_hand():
    """beta = 0.25: L = max(0, 1 - 0.25 * 2) = 0.5; beta = 0.5: margin met, L = 0.
    A wrong-way pair (h = -2), beta = 0.25: L = 1 + 0.5 = 1.5."""
    assert preference_loss("hinge", *_pair(), beta=0.25)[0].item() == pytest.approx(0.5)
    assert preference_loss("hinge", *_pair(), beta=0.5)[0].item() == pytest.approx(0.0)
    pc, pr, rc, rr = _pair()
    assert preference_loss("hinge", pr, pc, rc, rr, beta=0.25)[0].item() == pytest.approx(1.5)


def test_simpo_by_hand_is_reference_free_and_length_normalised():
    """log pi(y_w) = -2 over 4 tokens (avg -0.5), log pi(y_l) = -6 over 3 tokens (avg -2);
    beta = 2, gamma = 1: z = 2(-0.5) - 2(-2) - 1 = 2, L = log(1 + e^-2) = 0.126928.
    Rewards are beta * average log-prob: -1 and -4."""
    pc, pr = torch.tensor([-2.0]), torch.tensor([-6.0])
    lengths = torch.tensor([4.0]), torch.tensor([3.0])
    loss, m = preference_loss("simpo", pc, pr, None, None, beta=2.0, simpo_gamma=1.0,
                              chosen_lengths=lengths[0], rejected_lengths=lengths[1])
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)
    assert m["rewards/chosen"].item() == pytest.approx(-1.0)
    assert m["rewards/rejected"].item() == pytest.approx(-4.0)
    assert "simpo" in REFERENCE_FREE


@pytest.mark.parametrize("loss_type", ["sigmoid", "cdpo"])
def test_identical_policy_and_reference_give_log2_for_any_beta(loss_type):
    """h = 0 exactly, so -log sigma(0) = log 2 whatever beta (and cDPO's eps mix of two log 2's)."""
    logps = torch.tensor([-5.0, -12.5, -0.3])
    for beta in (0.01, 1.0, 1e4):
        loss, m = preference_loss(loss_type, logps, logps.flip(0), logps, logps.flip(0), beta=beta, label_smoothing=0.2)
        assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
        assert m["rewards/margin"].item() == 0.0


def test_global_normaliser_sums_micro_batches_to_the_batch_mean():
    torch.manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6) for _ in range(4))
    full, fm = preference_loss("sigmoid", pc, pr, rc, rr, beta=0.3)
    parts = [preference_loss("sigmoid", pc[i:i + 2], pr[i:i + 2], rc[i:i + 2], rr[i:i + 2], beta=0.3, normalizer=6)
             for i in (0, 2, 4)]
    assert sum(p[0] for p in parts).item() == pytest.approx(full.item(), rel=1e-6)
    assert sum(p[1]["pairs"] for p in parts).item() == 6 == fm["pairs"].item()


def test_every_loss_is_in_the_dict_and_unknown_is_an_error():
    assert set(DPO_LOSSES) == {"sigmoid", "cdpo", "ipo", "hinge", "simpo"}
    with pytest.raises(ValueError, match="unknown loss_type"):
        preference_loss("kto", *_pair(), beta=0.1)
    with pytest.raises(ValueError, match="reference"):
        preference_loss("sigmoid", torch.zeros(1), torch.zeros(1), None, None, beta=0.1)
