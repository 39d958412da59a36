"""Per-sample teacher targets → one `TeacherBatch`: the single code path shared by the cached
collate (targets read from the store) and the online teacher (targets from a live forward), so
the two modes cannot drift apart in layout, order or dtype.

Both sources first produce a `SampleTeacher` per sample (`from_cached` / `from_align`), then
`collate_teacher` assembles the batch. Everything is float32 / int64 on the host (cached) or on
the teacher's device (online).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from pipeline.positions import SampleIndex
from pipeline.targets import SparseDistribution, focus_indices
from student_train.losses import TeacherBatch, TeacherTargets

AttnKey = tuple[str, str]  # (layer, block)
FOCUS_KEY: AttnKey = ("first", "tv")  # the focus score is defined on first-layer T→V attention


@dataclass
class SampleTeacher:
    """One sample's targets; a field is None when the loss does not need it.

    attn:          (layer, block) → [H_t, r, c] float32 (r·c == 0 when the sample lacks the block)
    focus:         [k] int64 ascending indices into |V|, None for a text-only sample
    vision_tokens: [|V|, D_t] float32, None for a text-only sample
    sparse:        top-k at the sample's |R| response positions (ids [|R|, k] int64,
                   logprobs [|R|, k] float32, tail_logmass [|R|] float32)  — cached mode
    logits:        dense teacher logits [|R|, vocab] float32 at the same positions — online mode
    """

    attn: dict[AttnKey, torch.Tensor] = field(default_factory=dict)
    focus: torch.Tensor | None = None
    vision_tokens: torch.Tensor | None = None
    sparse: SparseDistribution | None = None
    logits: torch.Tensor | None = None


def _t(x: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(dtype)


def from_cached(record, image_tokens: np.ndarray | None, needs: TeacherTargets) -> SampleTeacher:
    """A `cache_schema` SampleTargets (+ its image's [|V|, D_t] tokens when `needs.vision_tokens`)
    → SampleTeacher holding only what `needs` asks for."""
    has_image = bool(record.image_hash)
    st = SampleTeacher(attn={key: _t(record.attn[key], torch.float32) for key in needs.attn})
    if needs.focus and has_image:
        st.focus = _t(record.focus, torch.int64)  # the store keeps [0] (empty) for text-only samples
    if needs.vision_tokens and has_image:
        if image_tokens is None:
            raise ValueError(f"sample {record.sample_id!r}: image {record.image_hash!r} has no cached vision tokens")
        st.vision_tokens = _t(image_tokens, torch.float32)
    if needs.logits:
        st.sparse = SparseDistribution(
            ids=_t(record.topk_ids, torch.int64),
            logprobs=_t(record.topk_logprobs, torch.float32),
            tail_logmass=_t(record.tail_logmass, torch.float32),
        )
    return st


def from_align(al, i: int, needs: TeacherTargets, focus_k: int) -> SampleTeacher:
    """Sample `i` of a teacher `AlignOutput` → SampleTeacher, with the dump's reductions
    (`pipeline.targets.focus_indices` on first-layer T→V attention) and DENSE logits at R."""
    ix: SampleIndex = al.index[i]
    st = SampleTeacher(attn={key: al.attn[key][i].float() for key in needs.attn})
    if needs.focus and ix.has_image:
        st.focus = focus_indices(al.attn[FOCUS_KEY][i], focus_k)
    if needs.vision_tokens and ix.has_image:
        st.vision_tokens = al.vision_tokens[i].float()
    if needs.logits:
        resp = torch.from_numpy(np.asarray(ix.resp, dtype=np.int64)).to(al.logits.device)
        st.logits = al.logits[i].index_select(0, resp).float()  # [|R|, vocab]
    return st


def _stack_vision(samples: Sequence[SampleTeacher]) -> torch.Tensor | None:
    """[B, |V|, D_t] with zero rows for text-only samples; None when no sample has an image."""
    real = [s.vision_tokens for s in samples if s.vision_tokens is not None]
    if not real:
        return None
    out = real[0].new_zeros((len(samples), *real[0].shape))
    for b, s in enumerate(samples):
        if s.vision_tokens is not None:
            out[b] = s.vision_tokens
    return out


def collate_teacher(samples: Sequence[SampleTeacher], needs: TeacherTargets) -> TeacherBatch:
    """Per-sample targets (batch order) → TeacherBatch; response positions are concatenated
    sample by sample, the order `student_train.losses.gather_response` uses."""
    tb = TeacherBatch(attn={key: [s.attn[key] for s in samples] for key in needs.attn})
    if needs.focus:
        tb.focus = [s.focus for s in samples]
    if needs.vision_tokens:
        tb.vision_tokens = _stack_vision(samples)
    if needs.logits:
        if all(s.logits is not None for s in samples):
            tb.logits = torch.cat([s.logits for s in samples])  # [N, vocab]
        elif all(s.sparse is not None for s in samples):
            sd = [s.sparse for s in samples]
            tb.sparse = SparseDistribution(
                ids=torch.cat([d.ids for d in sd]),  # [N, k]
                logprobs=torch.cat([d.logprobs for d in sd]),  # [N, k]
                tail_logmass=torch.cat([d.tail_logmass for d in sd]),  # [N]
            )
        else:
            raise ValueError("the loss needs the teacher distribution but some samples carry neither form")
    return tb
