"""Per-command caches of what `alignkd eval` computes more than once per held-out image.

One eval command shows each of its images several times: to the generation pass, to the
other-image pass (as another record's image), to `image_use` (own and rotated) and to
`transfer_metrics` (student and teacher) -- on the default toy world ~6,600 image uses of 500
images. Both caches return exactly the values the uncached path computes:

* `PixelCache`: an image file's pixel values [3, S, S], preprocessed once per (file, S, aspect
  mode); `preprocess_image` is deterministic, so a cached tensor equals a fresh one bit for bit.
* `vision_token_cache(model)`: while active, `model.encode_images` returns each image's projector
  tokens [|V|, D] from a cache keyed by the image's pixel bytes. A row of a batched tower forward
  is the same function of its own pixels whatever the rest of the batch holds -- except through
  the kernels a float GEMM picks for a batch shape. Measured on this project's CPUs (1, 2 and 4
  threads): batches of 2..64 images give bit-identical rows in any composition, a batch of one
  image differs by ~1e-6. So one-image batches bypass the cache, a lone missing image is encoded as
  a pair with itself, and on its first batch the cache checks the assumption on this machine
  (the batch against a re-composed one); a difference switches caching off for that model.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image

from pipeline.models import MobileVLM, preprocess_image


class PixelCache:
    """Preprocessed pixel values of image files, read and preprocessed once each (up to
    `max_bytes` of them; later files are preprocessed on every call, as without the cache)."""

    def __init__(self, max_bytes: int = 2 << 30) -> None:
        self._px: dict[tuple[str, int, str | None], torch.Tensor] = {}
        self.bytes, self.max_bytes = 0, max_bytes

    def pixels(self, path: str | Path, model: MobileVLM) -> torch.Tensor:
        """Pixel values [3, S, S] of the image file `path` for `model` (its tower's S and the
        config's image_aspect_ratio). The cached tensor is shared: callers copy it into batches."""
        key = (str(Path(path).resolve()), model.image_size, getattr(model.config, "image_aspect_ratio", None))
        px = self._px.get(key)
        if px is None:
            with Image.open(path) as im:
                px = preprocess_image(im.convert("RGB"), model.config, model.image_size)
            if self.bytes + px.numel() * px.element_size() <= self.max_bytes:
                self._px[key] = px
                self.bytes += px.numel() * px.element_size()
        return px


def _keys(images: torch.Tensor) -> list[bytes]:
    """Digest of each image's pixel bytes, images [N, 3, S, S] (dtype and shape included); one
    copy to the host for the batch."""
    host = images.detach().cpu().contiguous()
    tag = f"{host.dtype}{tuple(host.shape[1:])}".encode()
    out = []
    for x in host:
        h = hashlib.blake2b(tag, digest_size=16)
        h.update(x.view(torch.uint8).numpy().tobytes() if x.numel() else b"")
        out.append(h.digest())
    return out


class _TokenCache:
    """The caching stand-in for one model's `encode_images` (see the module docstring)."""

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], max_bytes: int) -> None:
        self.encode = encode  # the model's own encode_images
        self.tokens: dict[bytes, torch.Tensor] = {}  # digest -> [|V|, D]
        self.bytes = 0
        self.max_bytes = max_bytes
        self.checked = False
        self.on = True

    def _store(self, keys: list[bytes], rows: torch.Tensor) -> None:
        for k, row in zip(keys, rows):
            if k not in self.tokens and self.bytes + row.numel() * row.element_size() <= self.max_bytes:
                self.tokens[k] = row
                self.bytes += row.numel() * row.element_size()

    def _first(self, images: torch.Tensor, keys: list[bytes]) -> torch.Tensor:
        """The batch as the model encodes it; caching stays on only if re-composed batches (the
        first image as a pair with itself; the batch reversed, less one image when it can spare
        one) give the same rows bit for bit."""
        self.checked = True
        out = self.encode(images)  # [N, |V|, D]
        pair = self.encode(images[:1].expand(2, *images.shape[1:]))
        rev = torch.arange(images.shape[0] - 1, -1, -1, device=images.device)[: max(2, images.shape[0] - 1)]
        self.on = torch.equal(pair[0], out[0]) and torch.equal(self.encode(images[rev]), out[rev])
        if self.on:
            self._store(keys, out)
        return out

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or images.shape[0] < 2 or not self.on:
            return self.encode(images)  # training, or the one-image kernels: never cached
        keys = _keys(images)
        if not self.checked:
            return self._first(images, keys)
        missing = {k: i for i, k in enumerate(keys) if k not in self.tokens}  # first row of each new image
        if missing:
            idx = torch.tensor(list(missing.values()), device=images.device)
            new = self.encode(images[idx.repeat(2)] if len(idx) == 1 else images[idx])[: len(idx)]
            fresh = dict(zip(missing, new))
            self._store(list(fresh), new)
        else:
            fresh = {}
        return torch.stack([self.tokens.get(k, fresh.get(k)) for k in keys])


@contextlib.contextmanager
def vision_token_cache(model: MobileVLM, max_bytes: int = 2 << 30) -> Iterator[None]:
    """While active, `model.encode_images` under no_grad reuses each image's projector tokens
    (at most `max_bytes` of them; later images are encoded as usual). Restored on exit."""
    if "encode_images" in vars(model):
        raise RuntimeError("vision_token_cache: this model's encode_images is already replaced (nested cache?)")
    model.encode_images = _TokenCache(model.encode_images, max_bytes)  # instance attribute shadows the method
    try:
        yield
    finally:
        del model.encode_images
