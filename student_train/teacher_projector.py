"""The teacher's projector tokens rebuilt from the student's own frozen tower, for a store dumped
with `cache.projector_tokens: recompute` (cache_schema keeps the teacher projector once instead
of ~1.08 MB of tokens per image at the 7B's width).

MobileVLM teachers and students share one frozen CLIP tower, so the teacher's tokens of an image
are its projector applied to the patch features the student's tower computes anyway:

    feats  = student tower(images)                 [n_img, P, mm_hidden]  (captured, no extra pass)
    tokens = teacher projector(feats) under no_grad [n_img, |V|, D_t] float32

This holds only for a student whose tower fingerprint (pipeline.fingerprint.tower_fingerprint:
weights, feature layer, image size) equals the one the store names; `vision_source` refuses any
other before training starts.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.fingerprint import tower_fingerprint
from pipeline.models.projector import LDPv2Projector


class TowerMismatchError(ValueError):
    """The store holds no projector tokens and the student's tower cannot rebuild them."""


def vision_source(prov, student_dir: str | Path, needs_vision_tokens: bool) -> str | None:
    """Where the loss's teacher projector tokens come from: None (the loss reads none), "stored"
    (the store holds them) or "recompute" (the student's tower equals the teacher's)."""
    if not needs_vision_tokens:
        return None
    if prov.projector_tokens == "stored":
        return "stored"
    got = tower_fingerprint(student_dir)
    if got != prov.vision_tower_fingerprint:
        raise TowerMismatchError(
            f"the cache holds no teacher projector tokens (projector_tokens: recompute) and the student's vision "
            f"tower {got} ({student_dir}) is not the teacher's {prov.vision_tower_fingerprint}: re-dump with "
            "cache.projector_tokens: stored, or train a student with the teacher's tower")
    return "recompute"


class TeacherTokens:
    """Frozen teacher projector on the student's device. Deliberately not an nn.Module attribute of
    the trained module: DeepSpeed must neither optimise, cast nor checkpoint it (it stays fp32,
    the dump's compute dtype for the projector)."""

    def __init__(self, tensors: dict[str, np.ndarray], num_vision_tokens: int, device: torch.device | str):
        w0 = tensors["mlp.mlp.0.weight"]  # [D_t, mm_hidden]
        grid = math.isqrt(num_vision_tokens)
        self.proj = LDPv2Projector(int(w0.shape[1]), int(w0.shape[0]), grid)
        self.proj.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=True)
        self.proj.requires_grad_(False).eval().to(device=device, dtype=torch.float32)
        self._feats: list[torch.Tensor] = []

    def capture(self, tower: nn.Module) -> None:
        """Keep the tower's output [n_img, P, mm_hidden] of each forward (the image rows, in batch order)."""
        tower.register_forward_hook(lambda _m, _inp, out: self._feats.append(out.detach()))

    def reset(self) -> None:
        self._feats.clear()

    @torch.no_grad()
    def tokens(self, input_has_image: torch.Tensor) -> torch.Tensor | None:
        """[B, |V|, D_t] float32 of the forward just run (zero rows for text-only samples, as the
        stored path's collate gives), None when no sample had an image. input_has_image: [B] bool."""
        feats, self._feats = self._feats, []
        if not bool(input_has_image.any()):
            return None
        if len(feats) != 1:
            raise RuntimeError(f"expected one vision-tower call in the student's forward, saw {len(feats)}")
        vt = self.proj(feats[0].float())  # [n_img, |V|, D_t]
        rows = input_has_image.nonzero().flatten()
        if vt.shape[0] != rows.numel():
            raise RuntimeError(f"the tower encoded {vt.shape[0]} images for {rows.numel()} image rows")
        return vt.new_zeros(input_has_image.shape[0], *vt.shape[1:]).index_copy(0, rows, vt)
