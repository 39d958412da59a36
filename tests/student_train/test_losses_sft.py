"""L_sup: shifted CE against a slow per-token reference; the response-position form agrees."""

import math

import torch

from pipeline.constants import IGNORE_INDEX
from pipeline.positions import sample_index
from student_train.losses import gather_response, sft_loss, sft_loss_at


def test_sft_loss_matches_slow_reference_and_the_gathered_form():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=g)
    labels = torch.tensor([[-100, -100, 3, 4, 5, -100], [-100, 7, -100, 9, -100, -100]])
    nll, n = 0.0, 0
    for b in range(2):
        for p in range(5):  # logits at p predict labels[p + 1]
            y = int(labels[b, p + 1])
            if y != IGNORE_INDEX:
                nll -= float(torch.log_softmax(logits[b, p].double(), -1)[y])
                n += 1
    ref = nll / n
    got = sft_loss(logits, labels).item()
    assert abs(got - ref) <= 1e-6 * ref
    index = [sample_index([1] * 6, labels[b].tolist(), 0) for b in range(2)]
    logits_r, flat = gather_response(logits, index)
    at = sft_loss_at(logits_r, labels.flatten()[flat + 1]).item()
    assert abs(at - ref) <= 1e-6 * ref


def test_no_supervised_token_is_zero_not_nan():
    logits = torch.randn(1, 4, 5, requires_grad=True)
    z = sft_loss(logits, torch.full((1, 4), IGNORE_INDEX))
    assert z.item() == 0.0 and not math.isnan(z.item())
    z.backward()
    assert sft_loss_at(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)).item() == 0.0
