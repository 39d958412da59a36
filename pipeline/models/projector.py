"""Vision side of MobileVLM V2: the frozen CLIP tower and the LDPv2 projector (`ldpnetv2`).

Module and parameter names follow the released checkpoints, so that the state dict reads
`model.vision_tower.vision_tower.*` and `model.mm_projector.{mlp.mlp.{0,2},peg.peg.0}.*`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel


class CLIPVisionTower(nn.Module):
    """Frozen CLIP ViT; features = hidden_states[select_layer] with the CLS token dropped."""

    def __init__(self, vision_config: CLIPVisionConfig, select_layer: int = -2):
        super().__init__()
        vision_config._attn_implementation = "sdpa"
        self.vision_tower = CLIPVisionModel(vision_config)
        self.vision_tower.requires_grad_(False)
        self.select_layer = select_layer
        self.image_size = vision_config.image_size
        self.grid = vision_config.image_size // vision_config.patch_size  # patches per side

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, S, S] -> patch features [N, grid*grid, C] (no grad: the tower is frozen)."""
        p = next(self.vision_tower.parameters())
        out = self.vision_tower(images.to(device=p.device, dtype=p.dtype), output_hidden_states=True)
        # hidden_states: (embeddings, layer 1, ..., layer N), each [N, 1 + grid*grid, C]
        return out.hidden_states[self.select_layer][:, 1:]


class _FeatureMLP(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class _TokenPool(nn.Module):
    """[N, h*h, D] -> [N, G*G, D]: average-pool the square token grid to G x G."""

    def __init__(self, grid: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d((grid, grid))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        h = math.isqrt(t)
        assert h * h == t, f"token count {t} is not a square grid"
        x = x.transpose(1, 2).reshape(n, d, h, h)  # token r*h + c -> pixel (r, c)
        return self.pool(x).flatten(2).transpose(1, 2)


class _PosInject(nn.Module):
    """PEG: depthwise 3x3 conv over the token grid plus a residual, [N, G*G, D] -> same."""

    def __init__(self, dim: int):
        super().__init__()
        self.peg = nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        g = math.isqrt(t)
        grid = x.transpose(1, 2).reshape(n, d, g, g)
        return (self.peg(grid) + grid).flatten(2).transpose(1, 2)


class LDPv2Projector(nn.Module):
    """`ldpnetv2`: MLP (mm_hidden -> D -> D), pool the patch grid to G x G, PEG -> [N, G*G, D]."""

    def __init__(self, mm_hidden_size: int, hidden_size: int, grid: int):
        super().__init__()
        self.grid = grid
        self.mlp = _FeatureMLP(mm_hidden_size, hidden_size)
        self.dwn = _TokenPool(grid)  # no parameters
        self.peg = _PosInject(hidden_size)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats [N, P, mm_hidden] (P a square) -> vision tokens [N, G*G, D]."""
        return self.peg(self.dwn(self.mlp(feats)))
