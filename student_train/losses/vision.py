"""Vision-token distillation through the token adapter W (docs/DESIGN.md §3.3–3.5; paper eqs. 3–5).

    L_focus = MSE(W(v^S_I), v^T_I)     I = the teacher's cached focus indices of the sample
    L_all   = MSE(W(v^S),   v^T)       all |V| projector tokens
(teacher_to_student: MSE(v^S_I, W(v^T_I)) and MSE(v^S, W(v^T)).) Each MSE is the mean over
every compared entry of the batch (selected tokens × adapted width). Text-only samples have no
tokens and are left out of both. How the two combine into L_v is the weights' business
(`student_train.losses.presets`): w_focus·L_focus + w_all·L_all.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from student_train.adapters import DIRECTIONS, TokenAdapter
from student_train.losses.attention import graph_zero


def _teacher_rows(teacher_tokens, rows: list[int], shape_v: int) -> torch.Tensor:
    """Stack the teacher tokens of the image samples: [n, |V|, D_t]."""
    if isinstance(teacher_tokens, torch.Tensor):
        t = teacher_tokens[rows]
    else:
        missing = [b for b in rows if teacher_tokens[b] is None]
        if missing:
            raise ValueError(f"samples {missing} have an image but no teacher vision tokens")
        t = torch.stack([teacher_tokens[b] for b in rows])
    if t.shape[1] != shape_v:
        raise ValueError(f"teacher has {t.shape[1]} vision tokens per image, the student {shape_v}")
    return t


def vision_token_losses(
    student_tokens: torch.Tensor | None,
    teacher_tokens: torch.Tensor | Sequence[torch.Tensor | None] | None,
    focus: Sequence[torch.Tensor | None] | None,
    has_image: Sequence[bool],
    adapter: TokenAdapter,
    direction: str = "student_to_teacher",
    *,
    want_focus: bool = True,
    want_all: bool = True,
) -> dict[str, torch.Tensor]:
    """L_focus and/or L_all over the batch's image samples.

    student_tokens: [B, |V|, D_s] projector output (rows of text-only samples are ignored), or
                    None when no sample of the batch has an image
    teacher_tokens: [B, |V|, D_t], or per sample [|V|, D_t] (None for text-only samples)
    focus:          per sample [k] int64 indices into |V| (None for text-only); only for L_focus
    has_image:      [B] which samples have an image
    returns: {"focus": scalar, "all_tokens": scalar} for the wanted terms, fp32; each 0 (tied to
             the adapter) when the batch has no image.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown adapter direction {direction!r}; use one of {DIRECTIONS}")
    rows = [b for b, h in enumerate(has_image) if bool(h)]
    out: dict[str, torch.Tensor] = {}
    if not rows:
        for name, want in (("focus", want_focus), ("all_tokens", want_all)):
            if want:
                out[name] = graph_zero(adapter, student_tokens)
        return out
    if student_tokens is None or teacher_tokens is None:
        raise ValueError(f"samples {rows} have an image but the student or teacher vision tokens are missing")
    s = student_tokens[rows]  # [n, |V|, D_s]
    t = _teacher_rows(teacher_tokens, rows, s.shape[1]).to(s.device)  # [n, |V|, D_t]
    s2t = direction == "student_to_teacher"
    src, fixed = (s, t) if s2t else (t, s)  # the adapted side and the side compared as is
    adapted = adapter(src) if want_all else None  # [n, |V|, D_out]
    if want_all:
        out["all_tokens"] = F.mse_loss(adapted.float(), fixed.float(), reduction="mean")
    if want_focus:
        if focus is None:
            raise ValueError("L_focus needs the teacher's focus indices (TeacherBatch.focus)")
        idx = []
        for j, b in enumerate(rows):
            if focus[b] is None:
                raise ValueError(f"sample {b} has an image but no focus indices")
            f = focus[b].to(device=s.device, dtype=torch.long)
            if f.numel() and (f.min() < 0 or f.max() >= s.shape[1]):
                raise ValueError(f"sample {b}: focus indices out of range [0, {s.shape[1]}): {f.tolist()}")
            idx.append(f + j * s.shape[1])  # flat index into [n·|V|]
        flat = torch.cat(idx)  # [Σk]
        fixed_i = fixed.flatten(0, 1)[flat]  # [Σk, D_out]
        # W is token-wise, so W(v)_I == W(v_I): adapt only the focus rows unless L_all did all
        pred_i = adapted.flatten(0, 1)[flat] if adapted is not None else adapter(src.flatten(0, 1)[flat])
        if flat.numel() == 0:
            out["focus"] = graph_zero(adapter, s)
        else:
            out["focus"] = F.mse_loss(pred_i.float(), fixed_i.float(), reduction="mean")
    return out
