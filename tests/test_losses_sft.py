"""SFT loss and the global-count reduction, against numbers worked by hand."""

import math

import pytest
import torch

from rlhfkit.losses.logprobs import entropy_from_logits, token_logps
from rlhfkit.losses.reduce import aggregate, masked_mean
from rlhfkit.losses.sft import count_target_tokens, sft_loss


def test_prompt_tokens_are_masked_by_hand():
    """Vocab of 2, sequence of 4 tokens [p, p, r, r]: prompt p masked.

    logits are zero everywhere except position 1 (predicting token 2) where they are [ln 3, 0]:
      p(label=0 | pos 1) = 3/4  -> nll = ln(4/3)
      p(label=1 | pos 2) = 1/2  -> nll = ln 2
    Position 0 predicts a prompt token (label -100) and is ignored.
    loss = (ln(4/3) + ln 2) / 2 tokens.
    """
    logits = torch.zeros(1, 4, 2)
    logits[0, 1] = torch.tensor([math.log(3.0), 0.0])
    logits[0, 0] = torch.tensor([100.0, -100.0])  # would dominate if the prompt were not masked
    labels = torch.tensor([[-100, -100, 0, 1]])
    loss, m = sft_loss(logits, labels)
    expected = (math.log(4 / 3) + math.log(2)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert m["tokens"].item() == 2
    assert count_target_tokens(labels.tolist()) == 2


def test_global_normaliser_makes_micro_batches_sum_to_the_full_batch_mean():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 5)
    labels = torch.randint(0, 5, (4, 6))
    labels[0, :4] = -100
    labels[2, :2] = -100
    full, _ = sft_loss(logits, labels)
    n = count_target_tokens(labels.tolist())
    parts = [sft_loss(logits[i : i + 1], labels[i : i + 1], normalizer=n)[0] for i in range(4)]
    assert sum(parts).item() == pytest.approx(full.item(), rel=1e-6)
    # A naive mean of per-micro-batch means is different (short sequences get overweighted).
    naive = sum(sft_loss(logits[i : i + 1], labels[i : i + 1])[0] for i in range(4)) / 4
    assert abs(naive.item() - full.item()) > 1e-4


def test_aggregate_modes_by_hand():
    values = torch.tensor([[1.0, 3.0, 0.0], [2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert aggregate(values, mask, "token_mean").item() == pytest.approx(2.0)  # (1+3+2)/3
    assert aggregate(values, mask, "seq_mean").item() == pytest.approx(2.0)  # (2 + 2) / 2
    assert aggregate(values, mask, "token_mean", normalizer=6).item() == pytest.approx(1.0)
    assert masked_mean(values, mask, dim=1).tolist() == [2.0, 2.0]
    with pytest.raises(ValueError):
        aggregate(values, mask, "sum")


def test_token_logps_and_entropy_by_hand():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    assert token_logps(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75))
    assert token_logps(logits, torch.tensor([[-100]])).item() == 0.0
    # temperature 2 halves the logits: p = sqrt(3) / (1 + sqrt(3))
    assert token_logps(logits / 2.0, torch.tensor([[1]])).item() == pytest.approx(
        math.log(math.sqrt(3) / (1 + math.sqrt(3)))
    )
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert entropy_from_logits(logits).item() == pytest.approx(h)
