"""Attention-map distillation (docs/DESIGN.md §3.1; paper eq. 1): MSE between the student's and the
teacher's attention probabilities of one (layer, block), heads aligned by a learned 1×1 conv.

Blocks are ragged (|T| varies per sample) so they come as per-sample lists; the error is summed
over every entry of the batch and divided by the number of entries (one mean over the batch's
entries, so long samples weigh more — the same as MSE over a padded batch with a validity mask).
"""

from __future__ import annotations

from typing import Sequence

import torch

from student_train.adapters import DIRECTIONS, HeadAdapter


def graph_zero(module: torch.nn.Module, like: torch.Tensor | None = None) -> torch.Tensor:
    """A scalar 0 tied to every parameter of `module` (and to `like`), fp32.

    Returned when a batch has nothing to compare (text-only samples), so the adapters still get a
    (zero) gradient and DeepSpeed's gradient reduction sees every parameter every step.
    """
    params = list(module.parameters())
    device = like.device if like is not None else (params[0].device if params else None)
    z = torch.zeros((), device=device)
    for p in params:
        z = z + p.sum().float()
    if like is not None:
        z = z + like.sum().float()
    return z * 0.0


def attention_distill_loss(
    student_blocks: Sequence[torch.Tensor],
    teacher_blocks: Sequence[torch.Tensor],
    adapter: HeadAdapter,
    direction: str = "student_to_teacher",
) -> torch.Tensor:
    """MSE between student and teacher attention blocks of one (layer, block).

    student_blocks: per sample [H_s, r, c] (r, c vary per sample; r*c == 0 samples are skipped)
    teacher_blocks: per sample [H_t, r, c], same r, c (cached, no gradient)
    adapter: HeadAdapter H_s→H_t ("student_to_teacher": MSE(adapter(A_S), A_T)) or H_t→H_s
             ("teacher_to_student": MSE(A_S, adapter(A_T)))
    returns: scalar fp32 = Σ squared errors / Σ entries over the batch, entries counted at the
             compared head count (H_t·r·c or H_s·r·c); 0 (tied to the adapter) when no entries.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown adapter direction {direction!r}; use one of {DIRECTIONS}")
    if len(student_blocks) != len(teacher_blocks):
        raise ValueError(f"{len(student_blocks)} student blocks but {len(teacher_blocks)} teacher blocks")
    sse, n = None, 0
    for i, (a_s, a_t) in enumerate(zip(student_blocks, teacher_blocks)):
        if a_s.shape[-2:] != a_t.shape[-2:]:
            raise ValueError(
                f"sample {i}: student block {tuple(a_s.shape)} and teacher block {tuple(a_t.shape)} "
                "differ in [r, c]: student and teacher index sets disagree (check the cache's token_hash)"
            )
        if a_s.shape[-1] * a_s.shape[-2] == 0:
            continue
        a_t = a_t.to(a_s.device)
        if direction == "student_to_teacher":
            pred, target = adapter(a_s), a_t
        else:
            pred, target = a_s, adapter(a_t)
        err = (pred.float() - target.float()).pow(2).sum()  # [H_out, r, c] → scalar
        sse = err if sse is None else sse + err
        n += pred.numel()
    if sse is None:
        return graph_zero(adapter, student_blocks[0] if len(student_blocks) else None)
    return sse / n
