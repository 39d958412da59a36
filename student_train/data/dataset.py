"""One sample = its manifest row ⋈ its cached teacher targets (cached mode) + its preprocessed image.

Runs inside DataLoader workers: the dataset holds the columnar manifest rows, the (picklable,
lazily reopened) `CacheReader` and the student's config; each `__getitem__` does all the I/O of
one sample and `collate` assembles the micro-batch, so the training process only receives ready
tensors.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pipeline.fingerprint import token_fingerprint
from pipeline.models import preprocess_image
from pipeline.positions import sample_index
from student_train.data.batch import StudentBatch, pad_text, stack_images
from student_train.data.manifest import ManifestRow, StageRows
from student_train.losses import TeacherTargets
from student_train.teacher_targets import SampleTeacher, collate_teacher, from_cached


class CacheMismatchError(ValueError):
    """A cached record does not belong to the manifest row it is joined with."""


@dataclass
class LoadedSample:
    sample_id: str
    input_ids: np.ndarray  # [L] int64
    labels: np.ndarray  # [L] int64
    image: torch.Tensor | None  # [3, S, S] float32
    teacher: SampleTeacher | None


def load_image(row: ManifestRow, config, image_size: int) -> torch.Tensor:
    """Read the file once, check it is the image the manifest (and so the teacher) saw, preprocess."""
    try:
        data = open(row.image_path, "rb").read()
    except OSError as e:
        raise FileNotFoundError(f"sample {row.sample_id!r}: cannot read its image {row.image_path}: {e}") from e
    got = hashlib.sha256(data).hexdigest()[:16]
    if row.image_hash and got != row.image_hash:
        raise CacheMismatchError(
            f"sample {row.sample_id!r}: image {row.image_path} has sha256 {got}, the manifest recorded "
            f"{row.image_hash}; the file changed since `alignkd data build`: rebuild the manifest and the cache"
        )
    return preprocess_image(Image.open(io.BytesIO(data)), config, image_size=image_size)


class StudentDataset(Dataset):
    """Map-style: index i → LoadedSample of manifest row i (after missing samples were dropped).

    reader/needs: the CacheReader and what the loss reads from it (cached mode), else None.
    num_missing: manifest samples left out because the store lacks them (missing_sample: skip).
    """

    def __init__(self, rows: StageRows, config, image_size: int, num_vision_tokens: int,
                 reader=None, needs: TeacherTargets | None = None, num_missing: int = 0) -> None:
        self.rows, self.config, self.image_size = rows, config, image_size
        self.num_vision_tokens = num_vision_tokens
        self.reader, self.needs, self.num_missing = reader, needs, num_missing

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> LoadedSample:
        row = self.rows.row(i)
        if token_fingerprint(row.input_ids.tolist(), row.labels.tolist()) != row.token_hash:
            raise CacheMismatchError(
                f"sample {row.sample_id!r}: its manifest token_hash {row.token_hash} does not match its "
                f"input_ids/labels; manifest {self.rows.path} is corrupted: rebuild it with `alignkd data build`"
            )
        image = load_image(row, self.config, self.image_size) if row.image_path else None
        teacher = self._teacher(row) if self.reader is not None else None
        return LoadedSample(row.sample_id, row.input_ids, row.labels, image, teacher)

    def _teacher(self, row: ManifestRow) -> SampleTeacher:
        rec = self.reader.get(row.sample_id)
        fix = "re-run `alignkd teacher-dump` for this manifest (or point cache.dir at the matching store)"
        if rec.token_hash != row.token_hash:
            raise CacheMismatchError(
                f"sample {row.sample_id!r}: token_hash differs between manifest {self.rows.path} "
                f"({row.token_hash}) and cache {self.reader.path} ({rec.token_hash}): the teacher saw "
                f"other tokens; {fix}"
            )
        if (rec.image_hash or "") != row.image_hash:
            raise CacheMismatchError(
                f"sample {row.sample_id!r}: image_hash differs between manifest ({row.image_hash!r}) and "
                f"cache {self.reader.path} ({rec.image_hash!r}); {fix}"
            )
        ix = sample_index(row.input_ids, row.labels, self.num_vision_tokens)
        if rec.n_resp != len(ix.resp) or rec.n_text != (ix.n_text_after if ix.has_image else 0):
            raise CacheMismatchError(
                f"sample {row.sample_id!r}: cache {self.reader.path} holds |R|={rec.n_resp}, |T|={rec.n_text}; "
                f"the manifest row gives |R|={len(ix.resp)}, |T|={ix.n_text_after}; {fix}"
            )
        tokens = None
        if self.needs.vision_tokens and rec.image_hash:
            tokens = self.reader.image_tokens(rec.image_hash)
        return from_cached(rec, tokens, self.needs)

    def collate(self, samples: list[LoadedSample]) -> StudentBatch:
        input_ids, labels, mask = pad_text([s.input_ids for s in samples], [s.labels for s in samples])
        teacher = None
        if self.reader is not None:
            teacher = collate_teacher([s.teacher for s in samples], self.needs)
        return StudentBatch(
            sample_ids=[s.sample_id for s in samples],
            input_ids=input_ids,
            labels=labels,
            attention_mask=mask,
            images=stack_images([s.image for s in samples]),
            teacher=teacher,
        )
