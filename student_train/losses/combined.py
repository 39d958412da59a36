"""The full Align-KD objective over one micro-batch (docs/DESIGN.md §3.7):

    L = sup·L_sup + rkl·L_rkl + attn·Σ_{(layer, block)} L_attn + focus·L_focus + all_tokens·L_all

from the student's `AlignOutput` and the teacher's targets for the same samples (`TeacherBatch`,
filled from the cache, or live in online mode). Terms with weight 0 are not computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from pipeline.targets import SparseDistribution
from student_train.adapters import Adapters
from student_train.losses.attention import attention_distill_loss
from student_train.losses.presets import ResolvedLoss
from student_train.losses.rkl import reverse_kl_dense, reverse_kl_sparse
from student_train.losses.sft import sft_loss_at
from student_train.losses.vision import vision_token_losses


class NonFiniteLossError(FloatingPointError):
    """A loss term is NaN/inf; `.term` names it (the recipe adds the batch's sample ids)."""

    def __init__(self, term: str, value: float):
        super().__init__(f"loss term {term!r} is not finite ({value})")
        self.term, self.value = term, value


@dataclass
class TeacherBatch:
    """The teacher's targets for one micro-batch, samples in the student batch's order.

    attn:  (layer, block) → per sample [H_t, r, c] float (r·c == 0 for samples without the block)
    focus: per sample [k] int64 focus indices into |V| (None for text-only samples)
    vision_tokens: [B, |V|, D_t], or per sample [|V|, D_t] (None for text-only samples)
    sparse: top-k distribution at the batch's response positions, concatenated sample by sample
            in `index.resp` order: ids/logprobs [N, k], tail_logmass [N], N = Σ_b |R_b|
    logits: dense teacher logits at the same N positions [N, vocab] (online mode); give either
            `sparse` or `logits`, not both
    Only the fields the resolved loss needs (`ResolvedLoss.teacher_targets()`) must be set.
    """

    attn: dict[tuple[str, str], list[torch.Tensor]] = field(default_factory=dict)
    focus: list[torch.Tensor | None] | None = None
    vision_tokens: torch.Tensor | list[torch.Tensor | None] | None = None
    sparse: SparseDistribution | None = None
    logits: torch.Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "TeacherBatch":
        def mv(x):
            if x is None:
                return None
            if isinstance(x, torch.Tensor):
                return x.to(device, non_blocking=non_blocking)
            if isinstance(x, SparseDistribution):
                return SparseDistribution(mv(x.ids), mv(x.logprobs), mv(x.tail_logmass))
            return [mv(v) for v in x]

        return replace(self, attn={k: mv(v) for k, v in self.attn.items()}, focus=mv(self.focus),
                       vision_tokens=mv(self.vision_tokens), sparse=mv(self.sparse), logits=mv(self.logits))


def gather_response(student_logits: torch.Tensor, index) -> tuple[torch.Tensor, torch.Tensor]:
    """Student logits at every sample's response positions, concatenated in sample order.

    student_logits: [B, L_emb, vocab]; index: per sample `SampleIndex`.
    returns: ([N, vocab] logits, [N] int64 flat positions b·L_emb + p).
    """
    b, length = student_logits.shape[:2]
    if len(index) != b:
        raise ValueError(f"{len(index)} SampleIndex entries for a batch of {b}")
    flat = np.concatenate([np.asarray(ix.resp, dtype=np.int64) + i * length for i, ix in enumerate(index)] or [np.zeros(0, np.int64)])
    flat_t = torch.from_numpy(flat).to(student_logits.device)
    return student_logits.flatten(0, 1).index_select(0, flat_t), flat_t


class AlignKDLoss(nn.Module):
    """L over one micro-batch. Its only parameters are the adapters' (`self.adapters`): register
    this module (or `adapters`) as a submodule of the trained module so they train and checkpoint.

    forward(student, teacher) → (total scalar fp32 with grad, {term: float}) where `student` has
    the `AlignOutput` fields logits [B, L_emb, vocab], labels [B, L_emb] (embedded; needed by
    L_sup), index list[SampleIndex], attn {(layer, block): list[[H_s, r, c]]}, vision_tokens
    [B, |V|, D_s] | None. The dict holds "loss" (the weighted total) and each active term
    unweighted ("sup", "rkl", "attn", "focus", "all_tokens"; with several attention maps also
    "attn/{layer}_{block}"). One host sync per call; raises NonFiniteLossError naming a term.
    """

    def __init__(self, resolved: ResolvedLoss, adapters: Adapters):
        super().__init__()
        self.resolved = resolved
        self.adapters = adapters
        if adapters.direction != resolved.adapter_direction:
            raise ValueError(f"adapters built {adapters.direction}, the loss wants {resolved.adapter_direction}")

    def forward(self, student, teacher: TeacherBatch) -> tuple[torch.Tensor, dict[str, float]]:
        w, r = self.resolved.weights, self.resolved
        terms: dict[str, torch.Tensor] = {}
        if w.sup or w.rkl:
            logits_r, flat = gather_response(student.logits, student.index)  # [N, vocab]
        if w.sup:
            if student.labels is None:
                raise ValueError("L_sup needs the student's embedded labels (pass labels to forward_align)")
            targets = student.labels.flatten().index_select(0, flat.to(student.labels.device) + 1)  # labels[b, p + 1]
            terms["sup"] = sft_loss_at(logits_r, targets)
        if w.rkl:
            terms["rkl"] = self._rkl(logits_r, teacher, [len(ix.resp) for ix in student.index])
        if w.attn:
            parts = {}
            for layer, block in r.attn_keys:
                key = (layer, block)
                if key not in student.attn:
                    raise KeyError(f"student attention {key} not captured: add it to the CaptureSpec")
                if key not in teacher.attn:
                    raise KeyError(f"teacher attention {key} missing: dump it (cache.layers/cache.blocks)")
                parts[f"attn/{layer}_{block}"] = attention_distill_loss(
                    student.attn[key], teacher.attn[key], self.adapters.head(layer, block), r.adapter_direction)
            terms["attn"] = sum(parts.values())
            if len(parts) > 1:
                terms.update(parts)
        if r.uses_vision_tokens:
            terms.update(vision_token_losses(
                student.vision_tokens, teacher.vision_tokens, teacher.focus,
                [ix.has_image for ix in student.index], self.adapters.token(), r.adapter_direction,
                want_focus=bool(w.focus), want_all=bool(w.all_tokens)))
        total = sum(getattr(w, name) * terms[name] for name in w.active())
        names = ["loss", *terms]
        values = torch.stack([total.detach().float(), *(t.detach().float() for t in terms.values())]).tolist()
        for name, v in zip(names[1:] + names[:1], values[1:] + values[:1]):  # name a term before the total
            if not math.isfinite(v):
                raise NonFiniteLossError(name, v)
        return total, dict(zip(names, values))

    def _rkl(self, logits_r: torch.Tensor, teacher: TeacherBatch, n_resp: list[int]) -> torch.Tensor:
        if (teacher.sparse is None) == (teacher.logits is None):
            raise ValueError("L_rkl needs exactly one teacher distribution: TeacherBatch.sparse (cached) or .logits (online)")
        n = logits_r.shape[0]
        got = teacher.logits.shape[0] if teacher.logits is not None else teacher.sparse.ids.shape[0]
        if got != n:
            raise ValueError(f"teacher distribution has {got} positions, the student's response positions "
                             f"number {n} (per sample {n_resp}): cache and manifest disagree")
        dev = logits_r.device
        if teacher.logits is not None:
            return reverse_kl_dense(logits_r, teacher.logits.to(dev))
        sd = teacher.sparse
        return reverse_kl_sparse(logits_r, sd.ids.to(dev), sd.logprobs.to(dev), sd.tail_logmass.to(dev),
                                 self.resolved.tail_model)
