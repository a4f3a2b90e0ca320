"""Bradley–Terry losses (pairwise, K-wise, soft labels, margin, centering) against hand-worked numbers."""

import math

import pytest
import torch

from rlhfkit.losses.bradley_terry import kwise_loss, pairwise_loss, pairwise_metrics


def softplus(x: float) -> float:
    """−log σ(x) = log(1 + e^{−x})."""
    return math.log1p(math.exp(-x))


def test_k3_ranking_is_the_mean_of_its_three_pairwise_losses_by_hand():
    """Rewards r = [2, 0, 1], ranking [0, 2, 1] (response 0 best, 1 worst).

    Pairs (winner, loser): (0, 2) Δ = 1; (0, 1) Δ = 2; (2, 1) Δ = 1.
    loss = [−log σ(1) − log σ(2) − log σ(1)] / 3
         = [2·log(1 + e^{−1}) + log(1 + e^{−2})] / 3
         = [2·0.3132617 + 0.1269280] / 3 = 0.2511505
    """
    rewards = torch.tensor([2.0, 0.0, 1.0])
    winners, losers, groups = torch.tensor([0, 0, 2]), torch.tensor([2, 1, 1]), torch.zeros(3, dtype=torch.long)
    loss, m = kwise_loss(rewards, winners, losers, groups)
    expected = (2 * softplus(1.0) + softplus(2.0)) / 3
    assert expected == pytest.approx(0.2511505, abs=1e-7)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # ... which is exactly the mean of the three K = 2 losses.
    pair_losses = [pairwise_loss(rewards[[w]], rewards[[lo]])[0] for w, lo in [(0, 2), (0, 1), (2, 1)]]
    assert loss.item() == pytest.approx(sum(p.item() for p in pair_losses) / 3, abs=1e-7)
    assert m["pairs"].item() == 3 and m["correct"].item() == 3
    assert m["margin_sum"].item() == pytest.approx(4.0)


def test_each_prompt_weighs_the_same_whatever_its_k():
    """Prompt A: K = 3 as above (mean pair loss 0.2511505); prompt B: K = 2 with Δ = −1
    (the model prefers the loser), loss −log σ(−1) = log(1 + e) = 1.3132617.
    Batch loss = (0.2511505 + 1.3132617) / 2 prompts = 0.7822061 — not the pair mean (4 pairs).
    """
    rewards = torch.tensor([2.0, 0.0, 1.0, 0.0, 1.0])
    winners = torch.tensor([0, 0, 2, 3])
    losers = torch.tensor([2, 1, 1, 4])
    groups = torch.tensor([0, 0, 0, 1])
    loss, m = kwise_loss(rewards, winners, losers, groups)
    a = (2 * softplus(1.0) + softplus(2.0)) / 3
    b = softplus(-1.0)
    assert loss.item() == pytest.approx((a + b) / 2, abs=1e-6)
    assert m["correct"].item() == 3  # the last pair is wrong


def test_soft_label_margin_and_centering_by_hand():
    """Soft label p = 0.8 at Δ = log 3 (σ = 3/4):
        −[0.8 log 0.75 + 0.2 log 0.25] = 0.8·0.2876821 + 0.2·1.3862944 = 0.5074045.
    p = 0.8 at Δ = 0: −[0.8 + 0.2] log 0.5 = log 2 (the label cannot be beaten at a tie).
    Margin m = 1 at Δ = 1: −log σ(0) = log 2.
    Centering η = 0.01 with r_w = 1, r_l = 0.5: −log σ(0.5) + 0.01·1.5² = 0.4740770 + 0.0225.
    """
    loss, _ = pairwise_loss(torch.tensor([math.log(3.0)]), torch.tensor([0.0]), targets=torch.tensor([0.8]))
    assert loss.item() == pytest.approx(0.5074045, abs=1e-6)
    loss, _ = pairwise_loss(torch.tensor([0.3]), torch.tensor([0.3]), targets=torch.tensor([0.8]))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    loss, _ = pairwise_loss(torch.tensor([1.0]), torch.tensor([0.0]), margins=torch.tensor([1.0]))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    loss, _ = pairwise_loss(torch.tensor([1.0]), torch.tensor([0.5]), center_coef=0.01)
    assert loss.item() == pytest.approx(softplus(0.5) + 0.0225, abs=1e-6)
    # A hard label is the soft label p = 1.
    hard, _ = pairwise_loss(torch.tensor([0.7]), torch.tensor([-0.2]))
    soft, _ = pairwise_loss(torch.tensor([0.7]), torch.tensor([-0.2]), targets=torch.tensor([1.0]))
    assert hard.item() == pytest.approx(soft.item(), abs=1e-7)


def test_soft_label_gradient_is_sigma_minus_p():
    """d/dΔ −[p log σ(Δ) + (1−p) log σ(−Δ)] = σ(Δ) − p; at Δ = log 3, p = 0.8: 0.75 − 0.8 = −0.05."""
    chosen = torch.tensor([math.log(3.0)], requires_grad=True)
    loss, _ = pairwise_loss(chosen, torch.tensor([0.0]), targets=torch.tensor([0.8]))
    loss.backward()
    assert chosen.grad.item() == pytest.approx(-0.05, abs=1e-6)


def test_kwise_batch_gives_the_same_gradient_as_enumerating_pairs():
    """A small MLP scores 2 prompts with K = 4 and K = 3 responses (feature vectors).

    K-wise: each response scored once, loss = mean over prompts of the mean over its pairs.
    Enumerated: every pair is its own forward pass (both responses re-scored), its loss weighted
    1 / (C(K_g, 2) · G), gradients accumulated pair by pair. The two gradients must agree.
    """
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    feats = torch.randn(7, 6)
    rankings = [[2, 0, 3, 1], [1, 2, 0]]
    offsets = [0, 4]
    winners, losers, groups = [], [], []
    for g, (ranking, off) in enumerate(zip(rankings, offsets, strict=True)):
        for i in range(len(ranking)):
            for j in range(i + 1, len(ranking)):
                winners.append(off + ranking[i])
                losers.append(off + ranking[j])
                groups.append(g)
    w, lo, gr = torch.tensor(winners), torch.tensor(losers), torch.tensor(groups)

    model.zero_grad()
    loss, _ = kwise_loss(model(feats).squeeze(-1), w, lo, gr)
    loss.backward()
    kwise_grads = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    total = 0.0
    n_pairs = {0: 6, 1: 3}
    for a, b, g in zip(winners, losers, groups, strict=True):
        r = model(feats[[a, b]]).squeeze(-1)
        pair, _ = pairwise_loss(r[:1], r[1:])
        (pair / (n_pairs[g] * 2)).backward()
        total += pair.item() / (n_pairs[g] * 2)
    assert loss.item() == pytest.approx(total, abs=1e-6)
    for kg, p in zip(kwise_grads, model.parameters(), strict=True):
        torch.testing.assert_close(kg, p.grad, atol=1e-6, rtol=1e-5)


def test_global_normalizer_splits_a_batch_into_micro_batches_exactly():
    """Two micro-batches of one prompt each, normalised by the global 2 prompts, sum to the full loss."""
    rewards = torch.tensor([0.5, -0.3, 1.2, 0.1, 0.4])
    full, _ = kwise_loss(rewards, torch.tensor([0, 0, 1, 3]), torch.tensor([1, 2, 2, 4]), torch.tensor([0, 0, 0, 1]))
    a, _ = kwise_loss(rewards[:3], torch.tensor([0, 0, 1]), torch.tensor([1, 2, 2]), torch.zeros(3, dtype=torch.long), normalizer=2)
    b, _ = kwise_loss(rewards[3:], torch.tensor([0]), torch.tensor([1]), torch.zeros(1, dtype=torch.long), normalizer=2)
    assert (a + b).item() == pytest.approx(full.item(), abs=1e-7)


def test_hinge_variant_and_unknown_variant():
    """hinge: max(0, 1 − Δ); Δ = 0.25 -> 0.75, Δ = 2 -> 0; mean over the prompt's 2 pairs = 0.375."""
    rewards = torch.tensor([2.0, 1.75, 0.0])
    loss, _ = kwise_loss(rewards, torch.tensor([0, 0]), torch.tensor([1, 2]), torch.zeros(2, dtype=torch.long), loss_type="hinge")
    assert loss.item() == pytest.approx(0.375)
    with pytest.raises(ValueError, match="unknown loss type"):
        kwise_loss(rewards, torch.tensor([0]), torch.tensor([1]), torch.zeros(1, dtype=torch.long), loss_type="nope")


def test_pairwise_metrics_accuracy_margin_and_calibration_by_hand():
    """Δ = [2, −1, 0.5, 0]: accuracy (1 + 0 + 1 + ½) / 4 = 0.625 (a tie counts half), margin 0.375.

    Confidence c = σ(|Δ|) = [0.8808, 0.7311, 0.6225, 0.5] falls in bins 3, 2, 1, 0 of
    [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]; with one pair per bin,
    ECE = ¼ (|1 − 0.8808| + |0 − 0.7311| + |1 − 0.6225| + |½ − ½|).
    """
    m = pairwise_metrics(torch.tensor([2.0, -1.0, 0.5, 0.0]), n_bins=5)
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert m["accuracy"] == pytest.approx(0.625)
    assert m["margin"] == pytest.approx(0.375)
    assert m["ece"] == pytest.approx(0.25 * ((1 - s(2)) + s(1) + (1 - s(0.5)) + 0), abs=1e-9)
    counts = [b["count"] for b in m["calibration"]]
    assert counts == [1, 1, 1, 1, 0]
    assert m["calibration"][2]["accuracy"] == 0.0
