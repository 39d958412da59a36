"""Supervised loss L_sup: the usual shifted next-token cross-entropy (HF convention: labels are
aligned with the inputs, logits at p predict labels[p + 1], -100 ignored, token-level mean over
the batch — what the model's own `.loss` computes). Ours runs in fp32 whatever the logits' dtype.

`AlignKDLoss` computes the same number from the logit rows it already gathered at the response
positions R (R is exactly the set of p with labels[p + 1] != -100, see pipeline.positions):
`sft_loss_at` below; `sft_loss` is the full-sequence form and the reference it is tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.constants import IGNORE_INDEX


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """logits: [B, L, vocab]; labels: [B, L] (unshifted). Scalar fp32 mean CE over supervised
    tokens; 0 (tied to logits) when no token is supervised."""
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ in [B, L]")
    pred = logits[:, :-1].flatten(0, 1).float()  # [B·(L−1), vocab]
    tgt = labels[:, 1:].flatten().to(pred.device)  # [B·(L−1)]
    if not (tgt != ignore_index).any():
        return logits.sum() * 0.0
    return F.cross_entropy(pred, tgt, ignore_index=ignore_index, reduction="mean")


def sft_loss_at(logits_r: torch.Tensor, targets_r: torch.Tensor) -> torch.Tensor:
    """logits_r: [N, vocab] student logits at the response positions; targets_r: [N] the token
    each predicts (labels[p + 1]). Scalar fp32 mean CE; 0 (tied to logits) when N == 0."""
    if targets_r.numel() == 0:
        return logits_r.sum() * 0.0
    return F.cross_entropy(logits_r.float(), targets_r.to(logits_r.device), reduction="mean")
