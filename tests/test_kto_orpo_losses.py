"""KTO and ORPO losses against numbers worked by hand, and against TRL 1.16's own code.

Tolerances: hand values are closed forms evaluated in float64 by `math`; the code runs in float32
(unit roundoff 6e-8) through a few exp/log/sigmoid calls on O(1) values, so atol = 1e-6. The TRL
parity tests feed both implementations the same float32 tensors: they differ only in operation
order, atol = 1e-6 as well.
"""

import math
import threading
from collections import defaultdict
from types import MethodType, SimpleNamespace

import pytest
import torch

from rlhfkit.losses.kto import kto_loss, kto_reference_point
from rlhfkit.losses.orpo import log1mexp, log_odds, odds_ratio_loss, orpo_loss


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


# ----------------------------------------------------------------------------- KTO
# Shared example, beta = 0.5:
#   policy log pi(y|x) [-1, -3, -2], reference [-2, -2, -2] -> rho = [+1, -1, 0]; labels [D, U, U]
#   mismatched pairs: policy [-2, -1], reference [-3, -1.6] -> rho_KL = [1, 0.6], z0 = 0.8

def _kto_batch(requires_grad=False):
    policy = torch.tensor([-1.0, -3.0, -2.0], requires_grad=requires_grad)
    return policy, torch.tensor([-2.0, -2.0, -2.0]), torch.tensor([True, False, False])


def test_kto_reference_point_by_hand_clamped_and_detached():
    """mean([-2 - -3, -1 - -1.6]) = mean([1, 0.6]) = 0.8. If the mismatched pairs average below
    0 (rho_KL = [-1, -0.5]) z0 is clamped to 0. z0 never carries a gradient."""
    kl_policy = torch.tensor([-2.0, -1.0], requires_grad=True)
    z0 = kto_reference_point(kl_policy, torch.tensor([-3.0, -1.6]))
    assert z0.item() == pytest.approx(0.8, abs=1e-6)
    assert not z0.requires_grad
    assert kto_reference_point(torch.tensor([-2.0, -1.0]), torch.tensor([-1.0, -0.5])).item() == 0.0


def test_kto_loss_values_weights_and_gradient_by_hand():
    """z0 = 0.8, beta = 0.5, lambda_D = 1, lambda_U = 1.5:
      desirable,   rho = +1: 1 - sigma(0.5 * (1 - 0.8))  = 1 - sigma(0.1) = 0.475021
      undesirable, rho = -1: 1.5 (1 - sigma(0.5 * (0.8 + 1))) = 1.5 (1 - sigma(0.9)) = 0.433575
      undesirable, rho =  0: 1.5 (1 - sigma(0.4))                                   = 0.601968
    d/d rho: desirable  -beta s (1 - s) at s = sigma(0.1): -0.5 * 0.524979 * 0.475021 = -0.124688;
             undesirable +lambda_U beta s (1 - s) at s = sigma(0.9): 0.75 * 0.710950 * 0.289050
             = 0.154124 (pushing rho down lowers the loss).
    Metrics: rewards/chosen = 0.5 * 1, rewards/rejected = 0.5 * (-1 + 0), counts 1 and 2, kl 0.8."""
    policy, ref, desirable = _kto_batch(requires_grad=True)
    losses, m = kto_loss(policy, ref, desirable, torch.tensor(0.8), beta=0.5, undesirable_weight=1.5)
    expected = [1 - _sigmoid(0.1), 1.5 * (1 - _sigmoid(0.9)), 1.5 * (1 - _sigmoid(0.4))]
    torch.testing.assert_close(losses, torch.tensor(expected), rtol=0, atol=1e-6)
    losses.sum().backward()
    s1, s9 = _sigmoid(0.1), _sigmoid(0.9)
    assert policy.grad[0].item() == pytest.approx(-0.5 * s1 * (1 - s1), abs=1e-6)
    assert policy.grad[1].item() == pytest.approx(1.5 * 0.5 * s9 * (1 - s9), abs=1e-6)
    assert m["rewards/chosen"].item() == pytest.approx(0.5, abs=1e-6)
    assert m["rewards/rejected"].item() == pytest.approx(-0.5, abs=1e-6)
    assert (m["count/chosen"].item(), m["count/rejected"].item()) == (1.0, 2.0)
    assert m["kl"].item() == pytest.approx(0.8, abs=1e-6)


def test_kto_reference_point_over_processes_is_the_global_mean():
    """Process 0 holds rho_KL [1, 0.6, 0.2], process 1 holds [2.2]: global mean 4 / 4 = 1.0 on
    both (the mean of the two local means would be (0.6 + 2.2) / 2 = 1.4). all_reduce is a sum
    over threads behind a barrier, indistinguishable from real processes for the code."""
    shards = [(torch.tensor([1.0, 0.6, 0.2]), torch.zeros(3)), (torch.tensor([2.2]), torch.zeros(1))]
    barrier, slots, out = threading.Barrier(2), [None, None], [None, None]

    def worker(rank):
        def all_reduce(t):
            slots[rank] = t
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            return total

        out[rank] = kto_reference_point(*shards[rank], all_reduce=all_reduce).item()

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(2)]
    [th.start() for th in threads]
    [th.join() for th in threads]
    assert out == pytest.approx([1.0, 1.0], abs=1e-6)


def _trl_kto_loss(policy, ref, desirable, kl_policy, kl_ref, beta, wd, wu):
    """TRL 1.16's KTOTrainer._compute_loss, called unbound on a minimal stand-in for the trainer.

    TRL 1.16 has no standalone KTO loss function: the loss is computed inside `_compute_loss`
    from the model's per-token log-probs. The stand-in model returns, for a row [0, k], one
    "token" log-prob equal to table[k]; rows 1..N are the examples and N+1..N+M the mismatched
    pairs, so TRL's summed completion log-probs are exactly `policy` and `kl_policy`. The reference
    log-probs go in precomputed (`ref_logps`, `ref_KL_logps`), as TRL's precompute option does.
    Returns (loss, metrics)."""
    from trl import KTOTrainer

    n, m = policy.shape[0], kl_policy.shape[0]
    table = torch.cat([torch.zeros(1), policy, kl_policy])

    def model(input_ids, labels, **_):
        lp = table[input_ids[:, 1:]] * (labels[:, 1:] != -100)
        return SimpleNamespace(log_probs=lp, entropy=torch.zeros_like(lp), mean_logits=torch.zeros_like(lp))

    rows = torch.arange(1, n + 1)[:, None]
    kl_rows = torch.arange(n + 1, n + m + 1)[:, None]
    comp = torch.tensor([[0, 1]]).repeat(n, 1)
    batch = {
        "input_ids": torch.cat([torch.zeros_like(rows), rows], 1), "attention_mask": torch.ones(n, 2, dtype=torch.long),
        "completion_mask": comp, "label": desirable.clone(), "ref_logps": ref.clone(),
        "KL_input_ids": torch.cat([torch.zeros_like(kl_rows), kl_rows], 1),
        "KL_attention_mask": torch.ones(m, 2, dtype=torch.long), "KL_completion_mask": torch.tensor([[0, 1]]).repeat(m, 1),
        "ref_KL_logps": kl_ref.clone(),
    }
    acc = SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda t: t)
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=acc, precompute_ref_logps=True, calculate_KL=True,
        loss_type="kto", beta=beta, desirable_weight=wd, undesirable_weight=wu, aux_loss_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
    )
    trainer._compute_kl_logps = MethodType(KTOTrainer._compute_kl_logps, trainer)
    loss = KTOTrainer._compute_loss(trainer, model, batch, return_outputs=False)
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}


def test_kto_matches_trl_on_a_fixed_batch():
    """One fixed batch (8 examples, 5 desirable, 8 mismatched pairs, beta 0.1, lambda_D 1,
    lambda_U 1.33): TRL's loss (mean of its per-example losses) equals the mean of ours, and so do
    its kl, rewards/chosen and rewards/rejected (TRL divides by the counts; we return sums)."""
    pytest.importorskip("trl", reason="trl is not installed")
    policy = torch.tensor([-12.0, -30.5, -8.25, -17.0, -22.0, -9.5, -40.0, -15.5])
    ref = torch.tensor([-13.5, -29.0, -9.0, -16.0, -25.0, -9.0, -37.5, -15.0])
    desirable = torch.tensor([True, False, True, True, False, True, False, True])
    kl_policy = torch.tensor([-20.0, -25.0, -11.0, -30.0, -14.0, -19.0, -33.0, -10.0])
    kl_ref = torch.tensor([-21.5, -24.0, -12.0, -31.0, -14.5, -21.0, -32.0, -10.25])
    beta, wd, wu = 0.1, 1.0, 1.33
    trl_loss, trl_m = _trl_kto_loss(policy, ref, desirable, kl_policy, kl_ref, beta, wd, wu)
    z0 = kto_reference_point(kl_policy, kl_ref)
    losses, m = kto_loss(policy, ref, desirable, z0, beta=beta, desirable_weight=wd, undesirable_weight=wu)
    print(f"KTO loss: TRL {trl_loss.item():.8f}  rlhfkit {losses.mean().item():.8f}  kl {trl_m['kl']:.6f}")
    assert losses.mean().item() == pytest.approx(trl_loss.item(), abs=1e-6)
    assert z0.item() == pytest.approx(trl_m["kl"], abs=1e-6)
    assert (m["rewards/chosen"] / m["count/chosen"]).item() == pytest.approx(trl_m["rewards/chosen"], abs=1e-6)
    assert (m["rewards/rejected"] / m["count/rejected"]).item() == pytest.approx(trl_m["rewards/rejected"], abs=1e-6)


# ----------------------------------------------------------------------------- ORPO
# Shared example: chosen tokens log-probs [log 0.5, log 0.5] (mean log 0.5, p_w = 0.5, odds 1),
# rejected tokens [log 0.1, log 0.4, pad] (mean log sqrt(0.04) = log 0.2, p_l = 0.2, odds 1/4).
# log odds ratio = log 1 - log(1/4) = log 4; L_OR = -log sigma(log 4) = log(1 + 1/4) = log 1.25.


def _orpo_batch():
    chosen = torch.tensor([[math.log(0.5), math.log(0.5)]], requires_grad=True)
    rejected = torch.tensor([[math.log(0.1), math.log(0.4), 0.0]], requires_grad=True)
    return chosen, torch.ones(1, 2), rejected, torch.tensor([[1.0, 1.0, 0.0]])


def test_orpo_loss_and_gradient_by_hand():
    """lam = 0.1: L = NLL + lam L_OR = -log 0.5 + 0.1 log 1.25 = 0.693147 + 0.022314 = 0.715461.
    d L_OR / d log p_w = -sigma(-log 4) / (1 - p_w) = -0.2 / 0.5 = -0.4, spread over 2 tokens by
    the mean: -0.2 each, times lam: -0.02; the NLL adds -1/2 per chosen token: total -0.52.
    d L_OR / d log p_l = +sigma(-log 4) / (1 - p_l) = 0.2 / 0.8 = 0.25 -> 0.125 a token -> 0.0125;
    the padded rejected position gets 0. (d log odds / d log p = 1 / (1 - p).)"""
    chosen, cmask, rejected, rmask = _orpo_batch()
    loss, m = orpo_loss(chosen, cmask, rejected, rmask, lam=0.1)
    assert loss.item() == pytest.approx(-math.log(0.5) + 0.1 * math.log(1.25), abs=1e-6)
    loss.backward()
    torch.testing.assert_close(chosen.grad, torch.tensor([[-0.52, -0.52]]), rtol=0, atol=1e-6)
    torch.testing.assert_close(rejected.grad, torch.tensor([[0.0125, 0.0125, 0.0]]), rtol=0, atol=1e-6)
    assert m["log_odds_ratio"].item() == pytest.approx(math.log(4), abs=1e-6)
    assert m["or_sum"].item() == pytest.approx(math.log(1.25), abs=1e-6)
    assert m["nll_sum"].item() == pytest.approx(-2 * math.log(0.5), abs=1e-6)
    assert (m["tokens"].item(), m["pairs"].item(), m["rewards/accuracy"].item()) == (2.0, 1.0, 1.0)


def test_orpo_global_normalisers():
    """With the global counts given (4 chosen tokens, 2 pairs in the whole batch) this pair's
    share is -2 log 0.5 / 4 + 0.1 log 1.25 / 2: half of each term."""
    chosen, cmask, rejected, rmask = _orpo_batch()
    loss, _ = orpo_loss(chosen, cmask, rejected, rmask, lam=0.1, token_normalizer=4, pair_normalizer=2)
    assert loss.item() == pytest.approx((-math.log(0.5) + 0.1 * math.log(1.25)) / 2, abs=1e-6)


def test_log_odds_is_stable_near_certainty():
    """log p = -1e-10: p = 1 - 1e-10 rounds to 1 in float32, so log(1 - exp(x)) is log 0 = -inf;
    log1mexp uses log(-expm1(x)) = log(1e-10) and log odds = -1e-10 + 23.025851 = 23.025851.
    log p = 0 exactly (a memorised response) gives a finite log odds and a finite (zero) gradient
    instead of inf / NaN. Far from 0 (x = -50) log odds = x - log(1 - e^-50) = -50 to float32."""
    x = torch.tensor([-1e-10, 0.0, -50.0], requires_grad=True)
    lo = log_odds(x)
    assert lo[0].item() == pytest.approx(-math.log(1e-10), abs=1e-5)
    assert math.isfinite(lo[1].item()) and lo[1].item() > 80
    assert lo[2].item() == pytest.approx(-50.0, abs=1e-6)
    losses, _ = odds_ratio_loss(x[:2], torch.tensor([-1.0, -1.0]))
    losses.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert log1mexp(torch.tensor([-math.log(2)])).item() == pytest.approx(-math.log(2), abs=1e-6)


def test_orpo_matches_trl_on_a_fixed_batch():
    """TRL 1.16 ships ORPO under trl.experimental.orpo; ORPOTrainer.odds_ratio_loss(self, chosen,
    rejected) takes mean per-token log-probs and returns beta * log sigma(log odds ratio) per pair
    (beta is TRL's name for lambda), and TRL's loss is NLL - mean of that. Called unbound on a
    stand-in with `beta` and `accelerator.device`. Same NLL on both sides, so the totals agree
    iff the odds-ratio terms do; both are checked."""
    orpo = pytest.importorskip("trl.experimental.orpo", reason="trl.experimental.orpo is not available")
    chosen_tok = torch.tensor([[-0.5, -1.25, -0.75, 0.0], [-2.0, -0.125, 0.0, 0.0], [-0.01, -0.02, -0.005, -0.001]])
    chosen_mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    rejected_tok = torch.tensor([[-1.5, -2.5, 0.0], [-0.25, -0.5, -3.0], [-0.002, -0.004, 0.0]])
    rejected_mask = torch.tensor([[1.0, 1, 0], [1, 1, 1], [1, 1, 0]])
    lam = 0.1
    loss, _ = orpo_loss(chosen_tok, chosen_mask, rejected_tok, rejected_mask, lam=lam)
    chosen_mean = (chosen_tok * chosen_mask).sum(1) / chosen_mask.sum(1)
    rejected_mean = (rejected_tok * rejected_mask).sum(1) / rejected_mask.sum(1)
    stand_in = SimpleNamespace(beta=lam, accelerator=SimpleNamespace(device=torch.device("cpu")))
    trl_losses = orpo.ORPOTrainer.odds_ratio_loss(stand_in, chosen_mean, rejected_mean)[0]
    nll = -(chosen_tok * chosen_mask).sum() / chosen_mask.sum()
    ours_or, _ = odds_ratio_loss(chosen_mean, rejected_mean)
    print(f"ORPO odds-ratio term: TRL {-trl_losses.mean().item():.8f}  rlhfkit {lam * ours_or.mean().item():.8f}; "
          f"total: TRL {(nll - trl_losses.mean()).item():.8f}  rlhfkit {loss.item():.8f}")
    torch.testing.assert_close(lam * ours_or, -trl_losses, rtol=0, atol=1e-6)
    assert loss.item() == pytest.approx((nll - trl_losses.mean()).item(), abs=1e-6)
