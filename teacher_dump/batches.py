"""Host-side batch preparation: load and check each sample's image and tokens, collate.

A sample that cannot be prepared (unreadable image, image bytes changed since the manifest was
built, tokens that no longer match their hash) becomes a `Failure` with its reason; the rest of
its batch goes on. Runs on a prefetch thread in the actor, one batch ahead of the teacher.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from pipeline.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from pipeline.fingerprint import token_fingerprint
from pipeline.models import preprocess_image
from pipeline.positions import SampleIndex, sample_index
from teacher_dump.reduce import BatchMeta


@dataclass(frozen=True)
class Failure:
    sample_id: str
    reason: str

    def to_dict(self) -> dict:
        return {"sample_id": self.sample_id, "reason": self.reason}


@dataclass
class Batch:
    """Model inputs (host tensors, right-padded) for the samples that prepared cleanly.

    input_ids [B, L] int64 (pad 0, one -200 per image row), attention_mask [B, L] int64,
    labels [B, L] int64 (pad -100), images [B, 3, S, S] float32 or None (zeros for text-only rows).
    """

    input_ids: torch.Tensor | None
    attention_mask: torch.Tensor | None
    labels: torch.Tensor | None
    images: torch.Tensor | None
    meta: BatchMeta
    index: list[SampleIndex] = field(default_factory=list)  # V/T/R per row, from the real labels
    failures: list[Failure] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.meta.sample_ids)


def load_image(path: str, want_hash: str, config, image_size: int) -> torch.Tensor:
    """Read, check against the manifest's hash and preprocess one image → [3, S, S] float32."""
    try:
        data = open(path, "rb").read()
    except OSError as exc:
        raise ValueError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    got = hashlib.sha256(data).hexdigest()[:16]
    if got != want_hash:
        raise ValueError(f"image {path} changed since the manifest was built (sha256 {got}, manifest {want_hash}): rebuild the manifest")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # decode now: a truncated file fails here, not inside preprocessing
    except Exception as exc:  # PIL raises several unrelated types for bad files
        raise ValueError(f"unreadable image {path}: {type(exc).__name__}: {exc}") from exc
    return preprocess_image(img, config, image_size=image_size)


def _check_tokens(ids: list[int], labels: list[int], token_hash: str, embedded_len: int, n_vision: int) -> None:
    if token_fingerprint(ids, labels) != token_hash:
        raise ValueError("input_ids/labels do not match the manifest's token_hash: rebuild the manifest")
    n_img = sum(1 for t in ids if t == IMAGE_TOKEN_INDEX)
    if n_img > 1 or len(ids) - n_img + n_img * n_vision != embedded_len:
        raise ValueError(
            f"embedded_len {embedded_len} does not match {len(ids)} tokens with {n_img} image(s) of {n_vision} "
            f"vision tokens: the manifest was built for another num_vision_tokens"
        )


def prepare_batch(rows: dict[str, list], take: list[int], owned: set[str], emitted: set[str], config, image_size: int, n_vision: int) -> Batch:
    """Prepare rows `take` of a unit. `emitted` (updated here, in batch order) holds the owned
    images whose projector tokens an earlier row of this unit already emits."""
    keep: list[int] = []
    pixels: dict[int, torch.Tensor] = {}
    failures: list[Failure] = []
    for i in take:
        sid = rows["sample_id"][i]
        try:
            _check_tokens(rows["input_ids"][i], rows["labels"][i], rows["token_hash"][i], rows["embedded_len"][i], n_vision)
            if rows["image_hash"][i]:
                pixels[i] = load_image(rows["image_path"][i], rows["image_hash"][i], config, image_size)
        except ValueError as exc:
            failures.append(Failure(sid, str(exc)))
            continue
        keep.append(i)

    emit = []
    for i in keep:
        h = rows["image_hash"][i]
        emit.append(bool(h) and h in owned and h not in emitted)
        if emit[-1]:
            emitted.add(h)
    meta = BatchMeta(
        sample_ids=[rows["sample_id"][i] for i in keep],
        token_hashes=[rows["token_hash"][i] for i in keep],
        image_hashes=[rows["image_hash"][i] for i in keep],
        emit_image=emit,
    )
    if not keep:
        return Batch(None, None, None, None, meta, [], failures)
    width = max(len(rows["input_ids"][i]) for i in keep)
    ids = np.zeros((len(keep), width), dtype=np.int64)  # pad id 0 (<unk>), right padding
    lab = np.full((len(keep), width), IGNORE_INDEX, dtype=np.int64)
    am = np.zeros((len(keep), width), dtype=np.int64)
    for r, i in enumerate(keep):
        n = len(rows["input_ids"][i])
        ids[r, :n], lab[r, :n], am[r, :n] = rows["input_ids"][i], rows["labels"][i], 1
    images = None
    if pixels:
        ref = next(iter(pixels.values()))
        images = torch.stack([pixels.get(i, torch.zeros_like(ref)) for i in keep])  # [B, 3, S, S]
    index = [sample_index(rows["input_ids"][i], rows["labels"][i], n_vision) for i in keep]
    return Batch(torch.from_numpy(ids), torch.from_numpy(am), torch.from_numpy(lab), images, meta, index, failures)
