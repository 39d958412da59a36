"""The manifest rows one training stage reads, kept columnar (pyarrow) so that millions of rows
cost arrays, not Python objects, and fork cheaply into DataLoader workers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.contract import read_manifest, subset_column
from pipeline.workflow import Workflow

STAGES = ("pretrain", "finetune")
_COLUMNS = ("sample_id", "dataset", "stage", "image_path", "image_hash", "input_ids", "labels", "token_hash")


def stage_mask(t: pa.Table, wf: Workflow, subset: str, stage: str) -> pa.ChunkedArray:
    """[rows] bool: the manifest rows a stage trains on: `stage`, in `subset` (column `in_<subset>`),
    and in `wf.train.<stage>.datasets` when that list is not empty. `t` needs the stage, dataset
    and subset columns; the one definition `StageRows` and the launch-side sample count share."""
    keep = pc.and_(pc.equal(t["stage"], stage), t[subset_column(subset)])
    wanted = getattr(wf.train, stage).datasets
    if wanted:
        keep = pc.and_(keep, pc.is_in(t["dataset"], pa.array(wanted)))
    return keep


@dataclass(frozen=True)
class ManifestRow:
    sample_id: str
    image_path: str  # absolute, "" for a text-only sample
    image_hash: str  # "" for a text-only sample
    input_ids: np.ndarray  # [L] int64, one IMAGE_TOKEN_INDEX at most
    labels: np.ndarray  # [L] int64, IGNORE_INDEX where unsupervised
    token_hash: str


class StageRows:
    """Rows of `stage` in subset `subset` (column `in_<subset>`), restricted to
    `wf.train.<stage>.datasets` when that list is not empty; manifest order."""

    def __init__(self, wf: Workflow, subset: str, stage: str) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; use one of {STAGES}")
        path = Path(wf.data.manifest)
        if not path.is_file():
            raise FileNotFoundError(f"manifest {path} not found: run `alignkd data build --workflow {wf.source}`")
        wf.subset_limit(subset)  # unknown subset: WorkflowError naming the known ones
        col = subset_column(subset)
        t = read_manifest(path, [*_COLUMNS, col])  # refuses another version or missing columns
        wanted = getattr(wf.train, stage).datasets
        if wanted:
            unknown = sorted(set(wanted) - set(t["dataset"].unique().to_pylist()))
            if unknown:
                raise ValueError(
                    f"train.{stage}.datasets names {unknown}, not in manifest {path} "
                    f"(it holds {sorted(t['dataset'].unique().to_pylist())})"
                )
        t = t.filter(stage_mask(t, wf, subset, stage)).combine_chunks()
        self.path, self.stage, self.subset = path, stage, subset
        self._cols = {c: t[c].chunk(0) if t[c].num_chunks else pa.array([], t[c].type) for c in _COLUMNS}
        self.sample_ids: list[str] = self._cols["sample_id"].to_pylist()

    def __len__(self) -> int:
        return len(self.sample_ids)

    def select(self, keep: np.ndarray) -> None:
        """Keep only rows where `keep` [N] bool is set (e.g. the samples present in the store)."""
        mask = pa.array(keep)
        self._cols = {c: a.filter(mask) for c, a in self._cols.items()}
        self.sample_ids = self._cols["sample_id"].to_pylist()

    @property
    def id_array(self) -> pa.Array:
        """[N] sample ids as an Arrow string array (vectorised membership tests)."""
        return self._cols["sample_id"]

    def row(self, i: int) -> ManifestRow:
        c = self._cols
        return ManifestRow(
            sample_id=self.sample_ids[i],
            image_path=c["image_path"][i].as_py(),
            image_hash=c["image_hash"][i].as_py(),
            input_ids=c["input_ids"][i].values.to_numpy(zero_copy_only=False).astype(np.int64),
            labels=c["labels"][i].values.to_numpy(zero_copy_only=False).astype(np.int64),
            token_hash=c["token_hash"][i].as_py(),
        )
