"""Draw a `Scene` with PIL. Pure function of the scene plus a seeded RNG for the texture, so the
PNG bytes are reproducible (PIL's PNG writer adds no timestamp)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from toy_world.scenes import COLOURS, Obj, Scene


def render(scene: Scene, image_size: int, rng: np.random.Generator) -> Image.Image:
    """RGB image of `scene`; `rng` only drives the distractor texture."""
    bg = np.full((image_size, image_size, 3), scene.background, dtype=np.int16)
    # distractors: low-contrast texture (±12 grey levels) that a model must learn to ignore
    if scene.texture == "striped":
        period = int(rng.integers(4, 9))
        yy, xx = np.mgrid[0:image_size, 0:image_size]
        stripes = ((xx + yy) // (period // 2 + 1)) % 2
        bg += (stripes * 24 - 12)[..., None].astype(np.int16)
    elif scene.texture == "speckled":
        bg += rng.integers(-12, 13, size=(image_size, image_size, 1), dtype=np.int16)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        _draw_shape(draw, scene, o, COLOURS[o.colour])
    return img


def object_labels(scene: Scene, image_size: int) -> np.ndarray:
    """[S, S] uint8 map: 0 = background, k + 1 = pixel of `scene.objects[k]`, drawn with the very
    geometry `render` uses (the per-patch targets of the toy tower's pre-training)."""
    img = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(img)
    for k, o in enumerate(scene.objects):
        _draw_shape(draw, scene, o, k + 1)
    return np.asarray(img, dtype=np.uint8)


def _draw_shape(draw: ImageDraw.ImageDraw, scene: Scene, o: Obj, fill) -> None:
    x0, y0, x1, y1 = o.cx - o.r, o.cy - o.r, o.cx + o.r, o.cy + o.r
    if o.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif o.shape == "square":
        # a square of the same area as the circle would look small; 0.85 r keeps them alike
        s = o.r * 0.85
        draw.rectangle((o.cx - s, o.cy - s, o.cx + s, o.cy + s), fill=fill)
    elif o.shape == "triangle":
        draw.polygon([(o.cx, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(f"scene {scene.image}: unknown shape {o.shape!r}")


def png_bytes(img: Image.Image) -> bytes:
    """PNG encoding with fixed settings (no metadata), so equal images give equal bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
