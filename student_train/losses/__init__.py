"""Align-KD loss components (docs/DESIGN.md §3), one module per family, each taking cached teacher
tensors (never a teacher model) and tested against a slow dense reference:

  sft.py        L_sup  shifted CE                         presets.py   LossConfig → ResolvedLoss
  rkl.py        L_rkl  reverse KL, dense or top-k + tail  combined.py  AlignKDLoss, TeacherBatch
  attention.py  L_attn attention-map MSE via HeadAdapter  fidelity.py  sparse-vs-dense RKL gradient angle
  vision.py     L_focus, L_all token MSE via TokenAdapter
"""

from student_train.losses.attention import attention_distill_loss
from student_train.losses.combined import AlignKDLoss, NonFiniteLossError, TeacherBatch, gather_response
from student_train.losses.presets import (
    PRESETS,
    LossConfigError,
    LossWeights,
    ResolvedLoss,
    TeacherTargets,
    resolve_loss,
)
from student_train.losses.rkl import reverse_kl_dense, reverse_kl_sparse
from student_train.losses.sft import sft_loss, sft_loss_at
from student_train.losses.vision import vision_token_losses

__all__ = [
    "AlignKDLoss", "LossConfigError", "LossWeights", "NonFiniteLossError", "PRESETS", "ResolvedLoss",
    "TeacherBatch", "TeacherTargets", "attention_distill_loss", "gather_response", "resolve_loss",
    "reverse_kl_dense", "reverse_kl_sparse", "sft_loss", "sft_loss_at", "vision_token_losses",
]
