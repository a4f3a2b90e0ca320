"""Advantage estimators and the critic-free loss options against numbers worked by hand.

Tolerances: every expected value is computed in float64 from the closed form in the docstring;
the code runs in float64 too, so differences are rounding only (~1e-15). atol = 1e-12 leaves
three orders of magnitude of room and still catches any term of the formula being off. Where
the code runs in float32 (default dtype) the tolerance is 1e-6: float32 has a 6e-8 unit
roundoff and the values are O(1) after a handful of operations.
"""

import math
import threading

import pytest
import torch

from rlhfkit.losses.advantages import ESTIMATORS, GROUPED, KL_IN_LOSS, NEEDS_CRITIC, uniform_groups
from rlhfkit.losses.ppo import gae, kl_loss, policy_loss, token_rewards, whiten
from rlhfkit.losses.reduce import aggregate, masked_mean

D = torch.float64


def _t(x):
    return torch.tensor(x, dtype=D)


def _close(actual, expected, atol=1e-12):
    torch.testing.assert_close(actual.double(), _t(expected), rtol=0, atol=atol)


def _mask(lengths, T):
    return (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).to(D)


def _as_processes(fn, shards):
    """Run fn(shard, all_reduce) on each shard in its own thread, with an all_reduce that sums the
    tensors every "process" passes (a barrier, like a real collective). Returns the outputs in
    shard order. The code under test cannot tell this from N real processes."""
    n = len(shards)
    barrier, slots, out = threading.Barrier(n), [None] * n, [None] * n

    def worker(rank):
        def all_reduce(t):
            slots[rank] = t
            barrier.wait()
            total = sum(slots[1:], slots[0].clone())
            barrier.wait()  # nobody overwrites its slot before everyone has summed
            return total

        out[rank] = fn(shards[rank], all_reduce)

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return out


# ----------------------------------------------------------------------------- GRPO / Dr. GRPO


def test_grpo_uses_the_unbiased_group_std_by_hand():
    """G = 2, scores [1, 3]: mean 2, deviations -1, +1. Unbiased std = sqrt((1 + 1) / (2 - 1))
    = sqrt(2), so A = -+1/sqrt(2) = -+0.707107 (the population std 1 would give -+1: this pins the
    convention). std_eps = 0 here so the hand value is exact. Broadcast on every real token,
    0 on padding; returns = the score on every real token."""
    mask = _mask([2, 1], 3)
    adv, ret = ESTIMATORS["grpo"](_t([1.0, 3.0]), torch.zeros(2, 3, dtype=D), mask, group_size=2, std_eps=0.0)
    s = 1 / math.sqrt(2)
    _close(adv, [[-s, -s, 0.0], [s, 0.0, 0.0]])
    _close(ret, [[1.0, 1.0, 0.0], [3.0, 0.0, 0.0]])


def test_grpo_and_dr_grpo_by_hand_two_groups():
    """G = 3, scores [0, 0, 3 | 1, 2, 3].
    Group 1: mean 1, deviations [-1, -1, 2], unbiased std sqrt((1 + 1 + 4) / 2) = sqrt(3).
    Group 2: mean 2, deviations [-1, 0, 1],  unbiased std sqrt((1 + 0 + 1) / 2) = 1.
    GRPO: deviations / std; Dr. GRPO: the deviations themselves (no std)."""
    scores, mask = _t([0.0, 0.0, 3.0, 1.0, 2.0, 3.0]), torch.ones(6, 1, dtype=D)
    kl = torch.zeros(6, 1, dtype=D)
    adv, _ = ESTIMATORS["grpo"](scores, kl, mask, group_size=3, std_eps=0.0)
    r3 = math.sqrt(3)
    _close(adv[:, 0], [-1 / r3, -1 / r3, 2 / r3, -1.0, 0.0, 1.0])
    adv, _ = ESTIMATORS["dr_grpo"](scores, kl, mask, group_size=3)
    _close(adv[:, 0], [-1.0, -1.0, 2.0, -1.0, 0.0, 1.0])


def test_grpo_matches_trl_group_scaling_on_a_fixed_reward_tensor():
    """TRL 1.16 computes GRPO advantages inline in GRPOTrainer._generate_and_score_completions
    (no function to call); its convention (grpo_trainer.py, scale_rewards="group") is
    (r - group mean) / (trl.trainer.utils.nanstd(group) + 1e-4). We call TRL's own nanstd (Bessel-
    corrected) for the std. Same float32 inputs and operations up to order: atol 1e-6."""
    trl_utils = pytest.importorskip("trl.trainer.utils", reason="trl is not installed")
    rewards = torch.tensor([0.0, 1.0, 1.0, 0.5, 2.0, 2.0, 2.0, 2.0, -1.0, 3.0, 0.25, 0.0])
    G = 4
    grouped = rewards.view(-1, G)
    trl_adv = (grouped - grouped.mean(1, keepdim=True)) / (trl_utils.nanstd(grouped, dim=1, keepdim=True) + 1e-4)
    adv, _ = ESTIMATORS["grpo"](rewards, torch.zeros(12, 1), torch.ones(12, 1), group_size=G)
    torch.testing.assert_close(adv[:, 0], trl_adv.reshape(-1), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- RLOO


def test_rloo_leave_one_out_baseline_by_hand():
    """G = 3, scores [0, 0, 3], beta = 0: the baseline of each response is the mean of the other
    two, [(0+3)/2, (0+3)/2, (0+0)/2] = [1.5, 1.5, 0], so A = [-1.5, -1.5, 3]
    (= G/(G-1) * (r - mean) = 1.5 * [-1, -1, 2])."""
    adv, ret = ESTIMATORS["rloo"](_t([0.0, 0.0, 3.0]), torch.zeros(3, 2, dtype=D), torch.ones(3, 2, dtype=D),
                                  group_size=3, beta=0.0)
    _close(adv, [[-1.5, -1.5], [-1.5, -1.5], [3.0, 3.0]])
    _close(ret, [[0.0, 0.0], [0.0, 0.0], [3.0, 3.0]])


def test_rloo_puts_the_summed_kl_in_the_sequence_reward_by_hand():
    """beta = 0.5; per-token KL rows [1.5, 0.5 | pad 7], [0, 0 | pad 7], [0, 0 | pad 7]: summed
    over real tokens [2, 0, 0] (the 7s on padding must not count). R = r - 0.5 * sum kl =
    [0 - 1, 0, 3] = [-1, 0, 3]. Baselines [(0+3)/2, (-1+3)/2, (-1+0)/2] = [1.5, 1, -0.5];
    A = R - baseline = [-2.5, -1, 3.5]; returns = R on real tokens."""
    mask = _mask([2, 2, 2], 3)
    kl = _t([[1.5, 0.5, 7.0], [0.0, 0.0, 7.0], [0.0, 0.0, 7.0]])
    adv, ret = ESTIMATORS["rloo"](_t([0.0, 0.0, 3.0]), kl, mask, group_size=3, beta=0.5)
    _close(adv, [[-2.5, -2.5, 0.0], [-1.0, -1.0, 0.0], [3.5, 3.5, 0.0]])
    _close(ret, [[-1.0, -1.0, 0.0], [0.0, 0.0, 0.0], [3.0, 3.0, 0.0]])


# ----------------------------------------------------------------------------- REINFORCE++

# Shared REINFORCE++ example: scores [1, 0], beta = 0.5, rows of length 3 and 1,
# kl [[0.2, 0.4, 0.0], [0.6, pad, pad]].
# token rewards (-beta kl, + score on the last token): [-0.1, -0.2, 1.0], [-0.3]
# returns to the end (gamma = 1):                      [0.7, 0.8, 1.0],   [-0.3]
# over the 4 real tokens: mean 2.2 / 4 = 0.55, deviations [0.15, 0.25, 0.45 | -0.85],
# population variance (0.0225 + 0.0625 + 0.2025 + 0.7225) / 4 = 0.2525.
_RPP_KL = [[0.2, 0.4, 0.0], [0.6, 0.0, 0.0]]


def test_reinforce_pp_by_hand():
    """See the shared example above: A = deviation / sqrt(0.2525 + 1e-8) (whiten's eps)."""
    mask = _mask([3, 1], 3)
    adv, ret = ESTIMATORS["reinforce_pp"](_t([1.0, 0.0]), _t(_RPP_KL), mask, beta=0.5)
    _close(ret, [[0.7, 0.8, 1.0], [-0.3, 0.0, 0.0]])
    s = math.sqrt(0.2525 + 1e-8)
    _close(adv, [[0.15 / s, 0.25 / s, 0.45 / s], [-0.85 / s, 0.0, 0.0]])


def test_reinforce_pp_baseline_subtracts_the_group_mean_first_by_hand():
    """G = 2, scores [1, 0] -> group mean 0.5 -> [0.5, -0.5]; then as above with those scores:
    token rewards [-0.1, -0.2, 0.5], [-0.3 - 0.5] = [-0.8]; returns [0.2, 0.3, 0.5], [-0.8].
    mean 0.2 / 4 = 0.05; deviations [0.15, 0.25, 0.45, -0.85], variance 0.2525: the advantages
    equal the plain ones because both rows are one group and every return moved by -0.5; the
    returns show the baseline."""
    mask = _mask([3, 1], 3)
    adv, ret = ESTIMATORS["reinforce_pp_baseline"](_t([1.0, 0.0]), _t(_RPP_KL), mask, group_size=2, beta=0.5)
    _close(ret, [[0.2, 0.3, 0.5], [-0.8, 0.0, 0.0]])
    s = math.sqrt(0.2525 + 1e-8)
    _close(adv, [[0.15 / s, 0.25 / s, 0.45 / s], [-0.85 / s, 0.0, 0.0]])


@pytest.mark.parametrize("name", ["reinforce_pp", "reinforce_pp_baseline", "gae"])
def test_two_processes_normalise_exactly_as_one(name):
    """The batch-wide statistics go through all_reduce, so splitting 8 rows over 2 "processes"
    (4 + 4 rows, very different lengths per shard) gives each row the advantage it gets when one
    process holds all 8. Without all_reduce each shard would whiten by its own statistics; the
    last assertion checks that this example really tells the two apart."""
    torch.manual_seed(0)
    B, T = 8, 6
    mask = _mask([6, 5, 6, 4, 1, 2, 1, 3], T)
    scores, kl, values = torch.randn(B, dtype=D), torch.rand(B, T, dtype=D) * mask, torch.randn(B, T, dtype=D) * mask
    opts = dict(group_size=2, beta=0.1, gamma=1.0, lam=0.9, whiten_rewards=True)

    def run(rows, all_reduce):
        return ESTIMATORS[name](scores[rows], kl[rows], mask[rows], values=values[rows], all_reduce=all_reduce, **opts)

    one_adv, one_ret = run(slice(0, 8), None)
    shards = _as_processes(run, [slice(0, 4), slice(4, 8)])
    torch.testing.assert_close(torch.cat([a for a, _ in shards]), one_adv, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat([r for _, r in shards]), one_ret, rtol=0, atol=1e-12)
    local = run(slice(0, 4), None)[0]
    assert (local - one_adv[:4]).abs().max() > 1e-3


def test_gae_estimator_is_the_ppo_recipe_composition():
    """"gae" = token_rewards -> (whiten rewards, mean kept) -> gae -> whiten advantages, i.e. what
    recipes/ppo.py does today, so PPO can take its advantages from ESTIMATORS unchanged."""
    torch.manual_seed(1)
    mask = _mask([4, 2, 3], 4)
    scores, kl, values = torch.randn(3, dtype=D), torch.rand(3, 4, dtype=D) * mask, torch.randn(3, 4, dtype=D) * mask
    adv, ret = ESTIMATORS["gae"](scores, kl, mask, values=values, beta=0.2, gamma=0.99, lam=0.9, whiten_rewards=True)
    rewards = whiten(token_rewards(scores, kl, mask, 0.2), mask, shift_mean=False)
    ref_adv, ref_ret = gae(rewards, values, mask, 0.99, 0.9)
    torch.testing.assert_close(adv, whiten(ref_adv, mask), rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, ref_ret, rtol=0, atol=1e-12)


def test_every_estimator_takes_the_common_options():
    """A loop passes one option set to whichever estimator it picked; each ignores what it does
    not use and returns (B, T) advantages and returns that are 0 on padding."""
    torch.manual_seed(2)
    mask = _mask([3, 1, 2, 3], 3)
    opts = dict(group_size=2, beta=0.1, values=torch.randn(4, 3, dtype=D) * mask, gamma=1.0, lam=0.95,
                all_reduce=None)
    for name, fn in ESTIMATORS.items():
        adv, ret = fn(torch.randn(4, dtype=D), torch.rand(4, 3, dtype=D) * mask, mask, **opts)
        assert adv.shape == ret.shape == (4, 3), name
        assert torch.all(adv[mask == 0] == 0) and torch.all(ret[mask == 0] == 0), name
    assert NEEDS_CRITIC <= set(ESTIMATORS) and KL_IN_LOSS <= GROUPED <= set(ESTIMATORS)


@pytest.mark.parametrize("name", sorted(GROUPED))
def test_grouped_estimators_reject_partial_groups(name):
    mask = torch.ones(6, 2, dtype=D)
    with pytest.raises(ValueError, match="whole groups"):
        ESTIMATORS[name](torch.zeros(6, dtype=D), torch.zeros(6, 2, dtype=D), mask, group_size=4, beta=0.0)
    with pytest.raises(ValueError, match="group_size >= 2"):
        ESTIMATORS[name](torch.zeros(6, dtype=D), torch.zeros(6, 2, dtype=D), mask, group_size=1, beta=0.0)


# ----------------------------------------------------------------------------- options


def test_uniform_groups_keep_mask_and_share_by_hand():
    """G = 2, scores [1, 1 | 0, 1 | 2, 2]: groups 1 and 3 are all equal (no signal), group 2 is
    kept. keep = [F, F, T, T, F, F], share dropped = 2 / 3."""
    keep, share = uniform_groups(_t([1.0, 1.0, 0.0, 1.0, 2.0, 2.0]), 2)
    assert keep.tolist() == [False, False, True, True, False, False]
    assert share.item() == pytest.approx(2 / 3, abs=1e-12)


def test_clip_higher_by_hand():
    """eps_low = 0.2, eps_high = 0.28; per token L = max(-A r, -A clip(r, 0.8, 1.28)):
      r = 1.25, A = +1: clip(1.25) = 1.25 -> L = -1.25 (symmetric 0.2 would clip to 1.2: -1.2)
      r = 1.40, A = +1: clip -> 1.28        -> L = max(-1.4, -1.28) = -1.28 (clipped)
      r = 0.70, A = -1: clip -> 0.8         -> L = max(0.7, 0.8) = 0.8 (clipped low)
    token mean = (-1.25 - 1.28 + 0.8) / 3 = -0.576667; clipfrac 2/3. Symmetric: (-1.2 - 1.2 + 0.8) / 3."""
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.25, 1.4, 0.7]]))
    adv, mask = torch.tensor([[1.0, 1.0, -1.0]]), torch.ones(1, 3)
    loss, m = policy_loss(new, old, adv, mask, clip_eps=0.2, clip_eps_high=0.28)
    assert loss.item() == pytest.approx((-1.25 - 1.28 + 0.8) / 3, abs=1e-6)
    assert m["clipfrac"].item() == pytest.approx(2 / 3, abs=1e-6)
    symmetric, _ = policy_loss(new, old, adv, mask, clip_eps=0.2)
    assert symmetric.item() == pytest.approx((-1.2 - 1.2 + 0.8) / 3, abs=1e-6)


@pytest.mark.parametrize("mode,normalizer,weights", [
    ("token_mean", None, [[1 / 4] * 3, [1 / 4, 0, 0]]),       # 4 real tokens
    ("seq_mean", None, [[1 / 6] * 3, [1 / 2, 0, 0]]),         # 1 / (len * B): 1/(3*2), 1/(1*2)
    ("constant", 2 * 3, [[1 / 6] * 3, [1 / 6, 0, 0]]),        # B * max_new_tokens = 6
])
def test_on_policy_single_update_is_the_plain_policy_gradient(mode, normalizer, weights):
    """old_logps = policy_logps.detach(): ratio = 1 exactly, so nothing is clipped (even with
    clip-higher) and L = -sum w_t A_t with d L / d logp_t = -w_t A_t, w_t the aggregation weight
    of token t (listed per mode). A = [[1, -2, 3], [0.5, pad, pad]]."""
    logps = torch.tensor([[-0.5, -1.0, -2.0], [-0.3, -9.0, -9.0]], dtype=D, requires_grad=True)
    adv, mask = _t([[1.0, -2.0, 3.0], [0.5, 0.0, 0.0]]), _mask([3, 1], 3)
    loss, m = policy_loss(logps, logps.detach(), adv, mask, 0.2, normalizer, mode, clip_eps_high=0.28)
    w = _t(weights)
    _close(loss.detach(), -(w * adv).sum().item())
    loss.backward()
    _close(logps.grad, (-(w * adv)).tolist())
    assert m["clipfrac"].item() == 0.0 and m["ratio"].item() == 1.0 and m["approx_kl"].item() == 0.0


def test_constant_aggregation_by_hand_and_micro_batches_add_up():
    """values [[1, 2, 3], [4, pad, pad]], normalizer 2 * 4 = 8 (B * max_new_tokens, max 4):
    (1 + 2 + 3 + 4) / 8 = 1.25, whatever the responses' lengths; the two one-row micro-batches
    with the same normalizer give 6/8 + 4/8, which sum to it. No normalizer: an error."""
    values, mask = _t([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]]), _mask([3, 1], 3)
    _close(aggregate(values, mask, "constant", 8), 1.25)
    parts = [aggregate(values[i : i + 1], mask[i : i + 1], "constant", 8) for i in range(2)]
    _close(parts[0], 0.75)
    _close(parts[1], 0.5)
    with pytest.raises(ValueError, match="needs a normalizer"):
        aggregate(values, mask, "constant")


def test_kl_loss_k3_value_and_gradient_by_hand():
    """policy log pi = -1, ref log pi_ref = -1.5 on the one real token (log r = -0.5); a padded
    token with a huge difference must not count. k3 = e^-0.5 - 1 + 0.5 = 0.10653066;
    beta = 0.1 -> loss 0.010653066 (token mean over 1 token).
    d/d logpi [beta (e^(ref - pol) - (ref - pol) - 1)] = beta (1 - e^(ref - pol)) = 0.1 (1 - e^-0.5)
    = 0.039346934. Metric kl = the unscaled estimate."""
    pol = torch.tensor([[-1.0, -1.0]], dtype=D, requires_grad=True)
    ref, mask = _t([[-1.5, -20.0]]), _mask([1], 2)
    loss, m = kl_loss(pol, ref, mask, beta=0.1)
    k3 = math.exp(-0.5) - 1 + 0.5
    _close(loss.detach(), 0.1 * k3)
    _close(m["kl"], k3)
    loss.backward()
    _close(pol.grad, [[0.1 * (1 - math.exp(-0.5)), 0.0]])


def test_masked_mean_all_reduce_is_the_global_mean_not_a_mean_of_means():
    """Shards [1, 2, 3] and [10]: global mean 16 / 4 = 4; the mean of the shard means would be
    (2 + 10) / 2 = 6."""
    shards = [_t([1.0, 2.0, 3.0]), _t([10.0])]
    out = _as_processes(lambda x, ar: masked_mean(x, torch.ones_like(x), all_reduce=ar), shards)
    assert [o.item() for o in out] == [4.0, 4.0]
    with pytest.raises(ValueError, match="dim=None"):
        masked_mean(shards[0], torch.ones(3, dtype=D), dim=0, all_reduce=lambda t: t)
