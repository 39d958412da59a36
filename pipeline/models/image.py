"""Image preprocessing of the released models (CLIPImageProcessor + `image_aspect_ratio: pad`),
with PIL and numpy only.

`pad`: paste the image centred on a square canvas of the CLIP mean colour (int(mean * 255) per
channel, like the original `expand2square`), resize to the tower's image size (bicubic), scale to
[0, 1], normalise with the CLIP mean/std. Without `pad`, CLIPImageProcessor's default: resize the
shortest edge to S (bicubic), centre-crop S x S.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import LlamaConfig

from pipeline.models.config import resolve_vision_config

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PAD_COLOUR = tuple(int(m * 255) for m in CLIP_MEAN)  # (122, 116, 104)


def expand_to_square(img: Image.Image, colour: tuple[int, int, int] = PAD_COLOUR) -> Image.Image:
    """Centre `img` on a square canvas of `colour` (a no-op for square images)."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new(img.mode, (side, side), colour)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def _resize_short_centre_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def preprocess_image(image: Image.Image, config: LlamaConfig, image_size: int | None = None) -> torch.Tensor:
    """PIL image -> pixel values [3, S, S] float32 for the model described by `config`.

    S is the vision tower's image size (read from `config.mm_vision_tower`), unless `image_size`
    is given (saves resolving the tower per image in hot loops).
    """
    size = image_size or resolve_vision_config(config).image_size
    img = image.convert("RGB")
    if getattr(config, "image_aspect_ratio", None) == "pad":
        img = expand_to_square(img).resize((size, size), Image.BICUBIC)
    else:
        img = _resize_short_centre_crop(img, size)
    x = np.asarray(img, dtype=np.float32) / 255.0  # [S, S, 3]
    x = (x - np.asarray(CLIP_MEAN, dtype=np.float32)) / np.asarray(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))  # [3, S, S]
