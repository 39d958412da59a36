"""attention_distill_loss against a slow loop reference, both directions, ragged batches."""

import pytest
import torch

from student_train.adapters import HeadAdapter
from student_train.losses import attention_distill_loss

H_S, H_T = 4, 8


def _blocks(shapes, heads, gen, grad=False):
    return [torch.rand(heads, r, c, generator=gen).requires_grad_(grad) for r, c in shapes]


def _slow_mse(student, teacher, adapter, direction):
    """Entry-by-entry: Σ (pred − target)² / #entries, the 1×1 conv written out per head."""
    student, teacher = [a.detach() for a in student], [a.detach() for a in teacher]
    w = adapter.conv.weight[:, :, 0, 0].detach().double()  # [H_out, H_in]
    b = adapter.conv.bias.detach().double()
    sse, n = 0.0, 0
    for a_s, a_t in zip(student, teacher):
        src, fixed = (a_s, a_t) if direction == "student_to_teacher" else (a_t, a_s)
        src, fixed = src.double(), fixed.double()
        for o in range(w.shape[0]):
            pred = b[o] + sum(w[o, h] * src[h] for h in range(w.shape[1]))  # [r, c]
            for i in range(pred.shape[0]):
                for j in range(pred.shape[1]):
                    sse += float(pred[i, j] - fixed[o, i, j]) ** 2
                    n += 1
    return sse / n


@pytest.mark.parametrize("direction", ["student_to_teacher", "teacher_to_student"])
def test_matches_slow_reference_on_a_ragged_batch(direction):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    shapes = [(3, 5), (0, 5), (6, 5), (1, 5)]  # |T| varies; the r = 0 sample is skipped
    s2t = direction == "student_to_teacher"
    adapter = HeadAdapter(H_S, H_T) if s2t else HeadAdapter(H_T, H_S)
    a_s, a_t = _blocks(shapes, H_S, g, grad=True), _blocks(shapes, H_T, g)
    got = attention_distill_loss(a_s, a_t, adapter, direction)
    ref = _slow_mse(a_s, a_t, adapter, direction)
    assert abs(got.item() - ref) <= 1e-6 * ref
    got.backward()
    assert adapter.conv.weight.grad.abs().sum() > 0
    assert a_s[0].grad.abs().sum() > 0 and a_s[1].grad is None  # the empty sample is skipped


def test_no_entries_gives_a_zero_tied_to_the_adapter():
    adapter = HeadAdapter(H_S, H_T)
    loss = attention_distill_loss([torch.rand(H_S, 0, 5)], [torch.rand(H_T, 0, 5)], adapter)
    assert loss.item() == 0.0
    loss.backward()
    assert adapter.conv.weight.grad is not None and adapter.conv.weight.grad.abs().sum() == 0


def test_shape_mismatch_names_the_sample():
    with pytest.raises(ValueError, match="sample 1"):
        attention_distill_loss([torch.rand(H_S, 2, 5), torch.rand(H_S, 2, 5)],
                               [torch.rand(H_T, 2, 5), torch.rand(H_T, 3, 5)], HeadAdapter(H_S, H_T))
