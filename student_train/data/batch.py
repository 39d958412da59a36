"""`StudentBatch`: one micro-batch as the student's forward takes it, plus the teacher's targets."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch

from pipeline.constants import IGNORE_INDEX
from student_train.losses import TeacherBatch

PAD_ID = 0  # <unk>, the pad id of the LLaMA tokenizer (CONTRACTS.md)


@dataclass
class StudentBatch:
    """B samples, text right-padded to the batch's longest row L (un-embedded: -200 marks the image).

    sample_ids:     B manifest ids, in batch order
    input_ids:      [B, L] int64, pad 0, at most one IMAGE_TOKEN_INDEX per row
    labels:         [B, L] int64, IGNORE_INDEX on padding and unsupervised positions
    attention_mask: [B, L] int64, 1 on real tokens
    images:         [B, 3, S, S] float32 (zeros for rows without an image), None if no row has one
    teacher:        TeacherBatch (cached mode) or None (sft / online: the recipe fills it live)
    """

    sample_ids: list[str]
    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    images: torch.Tensor | None
    teacher: TeacherBatch | None = None

    def __len__(self) -> int:
        return len(self.sample_ids)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "StudentBatch":
        """Tensors moved to `device` (non_blocking: the loader pins nothing, so this is a plain
        copy on CPU); images cast to `dtype` when given (the student's compute dtype)."""
        images = self.images
        if images is not None:
            images = images.to(device=device, dtype=dtype or images.dtype, non_blocking=True)
        teacher = self.teacher.to(device) if self.teacher is not None else None
        return replace(
            self,
            input_ids=self.input_ids.to(device, non_blocking=True),
            labels=self.labels.to(device, non_blocking=True),
            attention_mask=self.attention_mask.to(device, non_blocking=True),
            images=images,
            teacher=teacher,
        )


def pad_text(ids: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> tuple[torch.Tensor, ...]:
    """Right-pad per-sample [L_i] ids/labels → input_ids, labels, attention_mask, each [B, L]."""
    b, length = len(ids), max(len(x) for x in ids)
    input_ids = torch.full((b, length), PAD_ID, dtype=torch.int64)
    lab = torch.full((b, length), IGNORE_INDEX, dtype=torch.int64)
    mask = torch.zeros((b, length), dtype=torch.int64)
    for i, (x, y) in enumerate(zip(ids, labels)):
        n = len(x)
        input_ids[i, :n] = torch.from_numpy(np.asarray(x, dtype=np.int64))
        lab[i, :n] = torch.from_numpy(np.asarray(y, dtype=np.int64))
        mask[i, :n] = 1
    return input_ids, lab, mask


def stack_images(images: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """Per-sample [3, S, S] or None (text-only) → [B, 3, S, S] with zero rows, or None."""
    real = [x for x in images if x is not None]
    if not real:
        return None
    out = torch.zeros((len(images), *real[0].shape), dtype=real[0].dtype)
    for i, x in enumerate(images):
        if x is not None:
            out[i] = x
    return out
