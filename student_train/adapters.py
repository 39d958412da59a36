"""The two learned 1×1 projections Align-KD needs to compare a 16-head / 2048-wide student with a
32-head / 4096-wide teacher (docs/DESIGN.md §3).

Initialisation (measured, issue "Distillation that transfers"): attention targets are probabilities
of order 1/|L| (≈ 0.02 in the toy, smaller at real scale), so PyTorch's default conv bias (±1/√H_in)
alone made L_attn 0.118 on toy batches against 7.8e-4 without it, and pointed the student gradient
81–89° away from what a fitted adapter gives. So `HeadAdapter` starts as a map-to-map average:
zero bias, W[o, h] = 1/H_in (every output head = the mean of the input heads, still a probability
map), and `TokenAdapter` with zero bias and a weight that tiles (or block-averages) the identity,
so it copies features instead of adding noise. They are **trained with the
student** — the recipe registers the `Adapters` container as a submodule of the trained module so
their parameters are in the optimiser and in the DeepSpeed training checkpoints — and never part of
the exported student (export saves the student model alone). (The paper's public code builds them
outside the optimiser, so they never train: not reproduced.)

Direction (`LossConfig.adapter_direction`):
* "student_to_teacher" (default): the student's maps/tokens are projected onto the teacher's
  (heads 16→32, hidden 2048→4096); the targets stay the teacher's own values.
* "teacher_to_student" (the paper's public code): Conv2d(32→16) on heads, Conv1d(4096→2048) ≡
  Linear on tokens; the teacher side is projected and the loss is measured in student units.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

DIRECTIONS = ("student_to_teacher", "teacher_to_student")


class HeadAdapter(nn.Module):
    """Conv2d(h_in, h_out, kernel 1) over the head axis of attention maps.

    x: [H_in, r, c] (one sample) or [B, H_in, r, c] → [H_out, r, c] / [B, H_out, r, c].
    out[o, i, j] = Σ_h W[o, h] · x[h, i, j] + b[o]
    """

    def __init__(self, h_in: int, h_out: int):
        super().__init__()
        self.h_in, self.h_out = h_in, h_out
        self.conv = nn.Conv2d(h_in, h_out, kernel_size=1)
        with torch.no_grad():  # head-averaging, bias-free: maps onto maps from step one
            self.conv.weight.fill_(1.0 / h_in)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (3, 4) or x.shape[-3] != self.h_in:
            raise ValueError(f"HeadAdapter({self.h_in}→{self.h_out}) expects [B?, {self.h_in}, r, c], got {tuple(x.shape)}")
        x = x.to(self.conv.weight.dtype)
        return self.conv(x.unsqueeze(0)).squeeze(0) if x.dim() == 3 else self.conv(x)


class TokenAdapter(nn.Module):
    """1×1 conv on the hidden axis, i.e. Linear(d_in, d_out): [..., d_in] → [..., d_out]."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.proj = nn.Linear(d_in, d_out)
        with torch.no_grad():
            self.proj.weight.copy_(tiled_identity(d_in, d_out))
            self.proj.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.d_in:
            raise ValueError(f"TokenAdapter({self.d_in}→{self.d_out}) expects [..., {self.d_in}], got {tuple(x.shape)}")
        return self.proj(x.to(self.proj.weight.dtype))


def tiled_identity(d_in: int, d_out: int) -> torch.Tensor:
    """[d_out, d_in] weight with W[o, i] = 1/c_i when o ≡ i (mod d_in) or i ≡ o (mod d_out), c_i =
    how many inputs share output o: widening (d_out > d_in) copies each input feature into
    d_out/d_in outputs; narrowing averages the inputs that fold onto one output."""
    w = torch.zeros(d_out, d_in)
    if d_out >= d_in:
        w[torch.arange(d_out), torch.arange(d_out) % d_in] = 1.0
    else:
        w[torch.arange(d_in) % d_out, torch.arange(d_in)] = 1.0
        w /= w.sum(1, keepdim=True)
    return w


def attn_key_name(layer: str, block: str) -> str:
    """ModuleDict key of the head adapter of one captured (layer, block)."""
    return f"{layer}_{block}"


class Adapters(nn.Module):
    """Every adapter one loss configuration needs, as one module the recipe can register.

    One `HeadAdapter` per distilled attention (layer, block) — layers do not share heads'
    meaning, so neither do their adapters — in `self.heads[attn_key_name(layer, block)]`, and one
    `TokenAdapter` (`self.tokens`, shared by L_focus and L_all: the paper's single W) when either
    vision-token loss is on. A configuration with neither (e.g. `sft`, `rkl`) has no parameters.
    """

    def __init__(
        self,
        student_heads: int,
        teacher_heads: int,
        student_hidden: int,
        teacher_hidden: int,
        direction: str = "student_to_teacher",
        attn_keys: Iterable[tuple[str, str]] = (("first", "tv"),),
        tokens: bool = True,
    ):
        super().__init__()
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown adapter direction {direction!r}; use one of {DIRECTIONS}")
        self.direction = direction
        s2t = direction == "student_to_teacher"
        h_in, h_out = (student_heads, teacher_heads) if s2t else (teacher_heads, student_heads)
        d_in, d_out = (student_hidden, teacher_hidden) if s2t else (teacher_hidden, student_hidden)
        self.heads = nn.ModuleDict({attn_key_name(l, b): HeadAdapter(h_in, h_out) for l, b in attn_keys})
        self.tokens = TokenAdapter(d_in, d_out) if tokens else None

    @classmethod
    def for_loss(cls, resolved, student_heads: int, teacher_heads: int, student_hidden: int,
                 teacher_hidden: int) -> "Adapters":
        """The adapters a `student_train.losses.ResolvedLoss` needs (only the active terms')."""
        return cls(student_heads, teacher_heads, student_hidden, teacher_hidden,
                   direction=resolved.adapter_direction, attn_keys=resolved.attn_keys,
                   tokens=resolved.uses_vision_tokens)

    def head(self, layer: str, block: str) -> HeadAdapter:
        name = attn_key_name(layer, block)
        if name not in self.heads:
            raise KeyError(f"no head adapter for ({layer!r}, {block!r}); built for {sorted(self.heads)}")
        return self.heads[name]

    def token(self) -> TokenAdapter:
        if self.tokens is None:
            raise KeyError("no token adapter: built without the vision-token losses (tokens=False)")
        return self.tokens

    @property
    def head_names(self) -> Sequence[str]:
        """ModuleDict keys of the head adapters, e.g. ("first_tv",)."""
        return tuple(self.heads.keys())
