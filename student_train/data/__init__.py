"""Phase 2's input: manifest rows of one stage/subset joined with the teacher cache, streamed to
each DeepSpeed rank through DataLoader workers.

    loader, n = build_train_loader(wf, "short", "finetune", "cached", rank, world_size,
                                   micro_batch=8, seed=0, start_step=0)
    for batch in loader:          # StudentBatch; batch.teacher is a TeacherBatch in cached mode
        ...

`start_step` / `end_step` count global micro-steps (identical on every rank; see sampler.py):
resuming after s optimiser steps with gradient accumulation g is `start_step = s * g`.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from torch.utils.data import DataLoader

from cache_schema.reader import CacheReader
from pipeline.models import load_config, resolve_vision_config
from pipeline.workflow import Workflow
from student_train.data.batch import StudentBatch
from student_train.data.dataset import CacheMismatchError, StudentDataset
from student_train.data.manifest import StageRows
from student_train.data.sampler import ShardedBatchSampler, micro_steps_per_epoch
from student_train.data.store_check import StoreInfo, StoreMismatchError, check_store, expected_provenance
from student_train.losses import TeacherTargets, resolve_loss

log = logging.getLogger(__name__)
MODES = ("cached", "online", "sft")


class MissingSampleError(KeyError):
    """Manifest samples absent from the cache while `train.missing_sample` is "error"."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def _drop_missing(wf: Workflow, rows: StageRows, reader: CacheReader) -> int:
    """Drop rows whose sample is not in the store ("skip") or raise ("error"); returns the count."""
    present = pc.is_in(rows.id_array, value_set=pa.array(reader.sample_ids, pa.string())).to_numpy(zero_copy_only=False)
    missing = [rows.sample_ids[i] for i in np.flatnonzero(~present)]
    if not missing:
        return 0
    show = ", ".join(map(repr, missing[:5])) + (f", … (+{len(missing) - 5} more)" if len(missing) > 5 else "")
    if wf.train.missing_sample == "error":
        raise MissingSampleError(
            f"{len(missing)} of {len(rows)} {rows.stage}/{rows.subset} samples of manifest {rows.path} are not "
            f"in cache {reader.path}: {show}. Re-run `alignkd teacher-dump` on this manifest, or set "
            "train.missing_sample: skip to train without them"
        )
    if wf.train.missing_sample != "skip":
        raise ValueError(f"train.missing_sample must be 'error' or 'skip', got {wf.train.missing_sample!r}")
    log.warning("skipping %d samples missing from cache %s: %s", len(missing), reader.path, show)
    rows.select(present)
    return len(missing)


def stored_needs(needs: TeacherTargets, prov) -> TeacherTargets:
    """What the loader reads of `needs` from a store of provenance `prov`: a cache v2 store's
    projector tokens and first-layer attention are recomputed by the trained module
    (student_train.teacher_projector), not read."""
    if prov.projector_tokens != "stored":
        needs = dataclasses.replace(needs, vision_tokens=False)
    if prov.attention != "stored":
        needs = dataclasses.replace(needs, attn=())
    return needs


def build_train_loader(
    wf: Workflow,
    subset: str,
    stage: str,
    mode: str,
    rank: int,
    world_size: int,
    micro_batch: int,
    seed: int,
    start_step: int = 0,
    end_step: int | None = None,
    reader: CacheReader | None = None,
    store_checked: bool = False,
) -> tuple[DataLoader, int]:
    """(DataLoader of StudentBatch for this rank, samples per epoch across all ranks).

    cached: joins the store `wf.cache_path(subset)` (or `reader`), checked by `check_store` first,
    and fills `batch.teacher` with only the targets the resolved loss needs. online / sft:
    `batch.teacher` is None. The loader yields global micro-steps [start_step, end_step)
    (end_step None: to the end of start_step's epoch); `loader.batch_sampler` is the
    ShardedBatchSampler, `loader.dataset.num_missing` the samples skipped as absent.
    store_checked: the launching process checked the store already (a resolved student run).
    """
    if mode not in MODES:
        raise ValueError(f"unknown train mode {mode!r}; use one of {MODES}")
    rows = StageRows(wf, subset, stage)
    student = load_config(wf.models.student)
    needs, num_missing = None, 0
    if mode == "cached":
        reader = reader or CacheReader(wf.cache_path(subset))
        if not store_checked:
            check_store(wf, subset, reader)
        needs = stored_needs(resolve_loss(wf.train.loss).teacher_targets(), reader.provenance)
        num_missing = _drop_missing(wf, rows, reader)
    else:
        reader = None
    if len(rows) == 0:
        raise ValueError(f"no {stage} samples in subset {subset!r} of manifest {rows.path} "
                         f"(train.{stage}.datasets = {getattr(wf.train, stage).datasets})")
    ds = StudentDataset(rows, student, resolve_vision_config(student).image_size, wf.models.num_vision_tokens,
                        reader=reader, needs=needs, num_missing=num_missing)
    sampler = ShardedBatchSampler(len(rows), rank, world_size, micro_batch, seed, start_step, end_step)
    workers = wf.train.num_workers
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=ds.collate, num_workers=workers,
                        prefetch_factor=wf.train.prefetch_factor if workers > 0 else None)
    return loader, len(rows)


__all__ = [
    "CacheMismatchError", "MissingSampleError", "ShardedBatchSampler", "StoreInfo", "StoreMismatchError",
    "StudentBatch", "StudentDataset", "build_train_loader", "check_store", "expected_provenance",
    "micro_steps_per_epoch", "stored_needs",
]
