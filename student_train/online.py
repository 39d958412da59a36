"""Online mode: the frozen teacher runs beside the student and produces the same targets the cache
would hold, live, from one `forward_align` per micro-batch — with DENSE logits at the response
positions, so it is also the reference the cache's fidelity is judged against.

The reductions are `pipeline.targets`' (as in the dump) and the batch layout is
`student_train.teacher_targets`' (as in the cached collate).
"""

from __future__ import annotations

import torch

from pipeline.models import CaptureSpec, MobileVLM
from pipeline.workflow import Workflow
from student_train.data.batch import StudentBatch
from student_train.losses import TeacherBatch, TeacherTargets, resolve_loss
from student_train.teacher_targets import FOCUS_KEY, collate_teacher, from_align


def capture_spec(needs: TeacherTargets) -> CaptureSpec:
    """The teacher capture that covers `needs` (focus is defined on first-layer T→V attention)."""
    keys = list(needs.attn) + ([FOCUS_KEY] if needs.focus else [])
    layers = tuple(dict.fromkeys(l for l, _ in keys))
    blocks = tuple(dict.fromkeys(b for _, b in keys))
    return CaptureSpec(layers=layers, blocks=blocks)  # may capture a few extra (layer, block) pairs


class OnlineTeacher:
    """OnlineTeacher(wf, device, dtype): `MobileVLM.from_pretrained(wf.models.teacher)`, frozen,
    in eval mode; `targets(batch)` → TeacherBatch on `device` (float32 targets whatever `dtype`).

    needs: the targets to compute (default: what `wf.train.loss` resolves to).
    """

    def __init__(self, wf: Workflow, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 needs: TeacherTargets | None = None) -> None:
        self.device, self.dtype = torch.device(device), dtype
        self.model = MobileVLM.from_pretrained(wf.models.teacher, dtype=dtype, device=self.device)
        self.model.requires_grad_(False).eval()
        if self.model.num_vision_tokens != wf.models.num_vision_tokens:
            raise ValueError(
                f"teacher {wf.models.teacher} makes {self.model.num_vision_tokens} vision tokens per image, "
                f"models.num_vision_tokens is {wf.models.num_vision_tokens} in {wf.source}"
            )
        self.needs = needs or resolve_loss(wf.train.loss).teacher_targets()
        self.spec = capture_spec(self.needs)
        self.focus_k = wf.cache.focus_k

    @property
    def heads(self) -> int:
        return self.model.config.num_attention_heads

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()  # not inference_mode: the targets enter the student's autograd graph as constants
    def targets(self, batch: StudentBatch) -> TeacherBatch:
        """Teacher targets for `batch` (samples in batch order), computed on the teacher's device."""
        images = batch.images
        if images is not None:
            if images.shape[-1] != self.model.image_size:
                raise ValueError(
                    f"batch images are {images.shape[-1]} px, the teacher's tower takes {self.model.image_size} px: "
                    "teacher and student must share the vision tower's preprocessing"
                )
            images = images.to(self.device, self.dtype)
        al = self.model.forward_align(
            input_ids=batch.input_ids.to(self.device),
            images=images,
            attention_mask=batch.attention_mask.to(self.device),
            labels=batch.labels.to(self.device),  # R (the response positions) comes from the labels
            spec=self.spec,
        )
        samples = [from_align(al, i, self.needs, self.focus_k) for i in range(len(batch))]
        return collate_teacher(samples, self.needs)
