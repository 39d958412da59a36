"""vision_token_losses (L_focus, L_all) against a slow per-token reference, both directions."""

import pytest
import torch

from student_train.adapters import TokenAdapter
from student_train.losses import vision_token_losses

B, V, D_S, D_T = 4, 9, 6, 10


def _slow(student, teacher, focus, has_image, adapter, direction):
    """Token by token: W v = weight @ v + bias, Σ (pred − target)² / #entries."""
    w, b = adapter.proj.weight.detach().double(), adapter.proj.bias.detach().double()
    student = student.detach()
    out = {}
    for name in ("focus", "all_tokens"):
        sse, n = 0.0, 0
        for s in range(B):
            if not has_image[s]:
                continue
            for j in (focus[s].tolist() if name == "focus" else range(V)):
                vs, vt = student[s, j].double(), teacher[s][j].double()
                pred, fixed = (w @ vs + b, vt) if direction == "student_to_teacher" else (w @ vt + b, vs)
                sse += float((pred - fixed).pow(2).sum())
                n += pred.numel()
        out[name] = sse / n
    return out


@pytest.mark.parametrize("direction", ["student_to_teacher", "teacher_to_student"])
@pytest.mark.parametrize("teacher_as_list", [False, True])
def test_matches_slow_reference(direction, teacher_as_list):
    torch.manual_seed(0)
    s2t = direction == "student_to_teacher"
    adapter = TokenAdapter(D_S, D_T) if s2t else TokenAdapter(D_T, D_S)
    student = torch.randn(B, V, D_S, requires_grad=True)
    teacher = torch.randn(B, V, D_T)
    has_image = [True, False, True, True]
    focus = [torch.tensor([0, 4, 8]), None, torch.tensor([2, 3, 5, 7]), torch.tensor([1])]  # ragged k
    t_in = [teacher[b] if has_image[b] else None for b in range(B)] if teacher_as_list else teacher
    got = vision_token_losses(student, t_in, focus, has_image, adapter, direction)
    ref = _slow(student, teacher, focus, has_image, adapter, direction)
    for name in ("focus", "all_tokens"):
        assert abs(got[name].item() - ref[name]) <= 1e-6 * ref[name], name
    (got["focus"] + 0.1 * got["all_tokens"]).backward()
    assert adapter.proj.weight.grad.abs().sum() > 0
    assert student.grad[0].abs().sum() > 0 and student.grad[1].abs().sum() == 0  # text-only row out


def test_focus_only_adapts_only_the_focus_rows_and_agrees():
    torch.manual_seed(1)
    adapter = TokenAdapter(D_S, D_T)
    student, teacher = torch.randn(B, V, D_S), torch.randn(B, V, D_T)
    focus = [torch.tensor([1, 2])] * B
    both = vision_token_losses(student, teacher, focus, [True] * B, adapter)
    only = vision_token_losses(student, teacher, focus, [True] * B, adapter, want_all=False)
    assert set(only) == {"focus"}
    torch.testing.assert_close(only["focus"], both["focus"], rtol=1e-6, atol=0)


def test_text_only_batch_and_errors():
    adapter = TokenAdapter(D_S, D_T)
    out = vision_token_losses(None, None, None, [False, False], adapter)
    assert out["focus"].item() == 0.0 and out["all_tokens"].item() == 0.0
    out["focus"].backward()
    assert adapter.proj.weight.grad is not None
    with pytest.raises(ValueError, match="out of range"):
        vision_token_losses(torch.randn(1, V, D_S), torch.randn(1, V, D_T), [torch.tensor([V])], [True], adapter)
    with pytest.raises(ValueError, match="no teacher vision tokens"):
        vision_token_losses(torch.randn(1, V, D_S), [None], [torch.tensor([0])], [True], adapter)
