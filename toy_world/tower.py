"""Pre-train the toy world's frozen CLIP tower on the world's own scenes.

Why: the real teacher and student share a *pretrained* CLIP ViT-L/14-336 whose patch features
already say what is where; a frozen *random* toy tower makes every toy model learn vision from
scratch through random features, so no demo-sized model ever read the image (grounding took
400-750 QA steps). A tower whose patch features linearly encode colour, shape, size and place
makes the toy a miniature of the real regime: the LLM side only has to learn where to look —
which is exactly what Align-KD's first-layer attention term teaches.

Objective: dense per-patch classification from the features the models use
(`hidden_states[select_layer]`, CLS dropped, [N, 256, C] for 64 px / 4 px patches), with one
linear head per attribute: the colour / shape / size of the object covering the patch (0 =
background) and the 3 x 3 grid row / column the patch lies in. The labels come from
`render.object_labels`, i.e. the geometry that drew the pixels. Those heads are linear, so their
accuracy on held-out images *is* a linear read-out of the frozen features (reported in the world's
stats as `tower_readout`).

Deterministic: fixed seed, fixed order, one torch thread (a different thread count may change the
float sums), so the same spec gives the same weights and world.json's hashes hold. Cost: ~20-40 s
of one CPU core for the default world (1,200 images, 300 steps).
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from pipeline.models.image import preprocess_image
from toy_world.render import object_labels
from toy_world.scenes import COLOURS, GRID, SHAPES, SIZES, Scene

# attribute -> number of classes (0 = background / no object for the object attributes)
HEADS = {"colour": 1 + len(COLOURS), "shape": 1 + len(SHAPES), "size": 1 + len(SIZES), "row": GRID, "col": GRID}
_COLOUR_IX = {c: i + 1 for i, c in enumerate(COLOURS)}
_SHAPE_IX = {s: i + 1 for i, s in enumerate(SHAPES)}
_SIZE_IX = {s: i + 1 for i, s in enumerate(SIZES)}
MIN_COVER = 0.25  # a patch belongs to an object when at least this share of its pixels does
STEPS, BATCH, LR = 300, 64, 3e-3
SELECT_LAYER = -2  # mm_vision_select_layer of every MobileVLM config


def patch_labels(scene: Scene, image_size: int, patch: int) -> dict[str, np.ndarray]:
    """Per-patch targets of one scene: {attribute: [g*g] int64}, g = image_size // patch, row-major."""
    g = image_size // patch
    lab = object_labels(scene, image_size)[: g * patch, : g * patch].reshape(g, patch, g, patch).transpose(0, 2, 1, 3)
    lab = lab.reshape(g * g, patch * patch)  # [g*g, patch*patch] object index per pixel
    out = {k: np.zeros(g * g, dtype=np.int64) for k in HEADS}
    counts = np.stack([(lab == k + 1).sum(1) for k in range(len(scene.objects))], 1) if scene.objects else None
    if counts is not None:
        best = counts.argmax(1)
        on = counts.max(1) >= MIN_COVER * patch * patch
        for k, o in enumerate(scene.objects):
            sel = on & (best == k)
            out["colour"][sel], out["shape"][sel], out["size"][sel] = _COLOUR_IX[o.colour], _SHAPE_IX[o.shape], _SIZE_IX[o.size]
    centre = (np.arange(g) + 0.5) * patch  # pixel centre of each patch row / column
    cell = np.minimum((centre * GRID / image_size).astype(np.int64), GRID - 1)
    out["row"] = np.repeat(cell, g)
    out["col"] = np.tile(cell, g)
    return out


def _load(scenes: list[Scene], images: Path, vision: CLIPVisionConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    cfg = SimpleNamespace(image_aspect_ratio="pad")
    x = torch.stack([preprocess_image(Image.open(images / s.image), cfg, vision.image_size) for s in scenes])
    labs = [patch_labels(s, vision.image_size, vision.patch_size) for s in scenes]
    y = {k: torch.from_numpy(np.stack([lb[k] for lb in labs])) for k in HEADS}  # each [N, g*g]
    return x, y


def _features(tower: CLIPVisionModel, x: torch.Tensor) -> torch.Tensor:
    """hidden_states[SELECT_LAYER] without CLS, [N, g*g, C], running only the layers it needs
    (the full forward also runs the layers after it: half the cost of pre-training for nothing).
    Equal to what `CLIPVisionTower` computes (tests/toy_world/test_toy_tower.py)."""
    layers = tower.encoder.layers
    h = tower.pre_layrnorm(tower.embeddings(x))
    for layer in layers[: len(layers) + 1 + SELECT_LAYER]:
        h = layer(h, None)
        h = h[0] if isinstance(h, tuple) else h
    return h[:, 1:]


def pretrain_tower(vision: CLIPVisionConfig, train: list[Scene], held: list[Scene], images: Path,
                   seed: int, steps: int = STEPS) -> tuple[dict[str, torch.Tensor], dict]:
    """Train a `CLIPVisionModel(vision)` for `steps` on `train`'s per-patch attributes; return its
    state dict (CLIPVisionModel keys) and the held-out linear read-out report (accuracy per
    attribute)."""
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        vision = CLIPVisionConfig.from_dict(vision.to_dict())
        vision._attn_implementation = "sdpa"
        tower = CLIPVisionModel(vision)
        heads = nn.ModuleDict({k: nn.Linear(vision.hidden_size, n) for k, n in HEADS.items()})
        x, y = _load(train, images, vision)
        params = [p for p in tower.parameters()] + list(heads.parameters())
        opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=max(steps, 1), pct_start=0.1)
        gen = torch.Generator().manual_seed(seed)
        tower.train()
        loss = torch.zeros(())
        for _ in range(steps):
            ix = torch.randint(len(x), (BATCH,), generator=gen)
            f = _features(tower, x[ix])
            loss = sum(nn.functional.cross_entropy(heads[k](f).flatten(0, 1), y[k][ix].flatten()) for k in HEADS)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        tower.eval()
        report = readout(tower, heads, *_load(held, images, vision))
    finally:
        torch.set_num_threads(threads)
    report["train_seconds"] = round(time.perf_counter() - t0, 1)
    report["final_train_loss"] = round(float(loss.detach()), 4)
    return {k: v.detach().clone() for k, v in tower.state_dict().items()}, report


@torch.no_grad()
def readout(tower: CLIPVisionModel, heads: nn.ModuleDict, x: torch.Tensor, y: dict[str, torch.Tensor]) -> dict:
    """Held-out accuracy of the linear heads: colour/shape/size over object patches, `object`
    (object vs background) and row/col over all patches."""
    f = torch.cat([_features(tower, x[i : i + 128]) for i in range(0, len(x), 128)])  # [N, g*g, C]
    pred = {k: heads[k](f).argmax(-1) for k in HEADS}
    obj = y["colour"] > 0
    rep = {k: round(float((pred[k] == y[k])[obj].float().mean()), 4) for k in ("colour", "shape", "size")}
    rep["object"] = round(float(((pred["colour"] > 0) == obj).float().mean()), 4)
    rep.update({k: round(float((pred[k] == y[k]).float().mean()), 4) for k in ("row", "col")})
    rep["held_out_images"] = len(x)
    return rep
