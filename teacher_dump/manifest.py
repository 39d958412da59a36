"""The manifest as the dump sees it: the subset's rows, the file-level metadata and a digest of
exactly what the cache depends on."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.contract import read_manifest, read_manifest_meta, subset_column
from teacher_dump.plan import SAMPLE_COLUMNS

# columns the dump reads (SAMPLE_COLUMNS for the actors, `template` for the provenance)
READ_COLUMNS = tuple(SAMPLE_COLUMNS) + ("template",)


@dataclass
class SubsetRows:
    table: pa.Table  # the `in_{subset}` rows, READ_COLUMNS only
    meta: dict  # file-level metadata, JSON-decoded (tokenizer_fingerprint, num_vision_tokens, subsets, ...)


def read_meta(path: str | Path) -> dict:
    """File-level metadata of a manifest (pipeline.data.manifest writes it JSON-encoded)."""
    return read_manifest_meta(path)


def read_subset(path: str | Path, subset: str) -> SubsetRows:
    """Read the rows of `subset`. Raises ValueError naming the missing columns."""
    flag = subset_column(subset)
    table = read_manifest(path, [*READ_COLUMNS, flag])  # ManifestFormatError (a ValueError) names what is missing
    table = table.filter(pc.field(flag)).drop_columns([flag])
    return SubsetRows(table=table, meta=read_meta(path))


def subset_fingerprint(table: pa.Table) -> str:
    """Digest of the subset's (sample_id, token_hash, image_hash), order-independent.

    What the cached targets depend on, and nothing else: a manifest rebuilt from the same data
    (new build time, other subsets) keeps its fingerprint; any changed sample changes it.
    """
    cols = [table.column(c).to_pylist() for c in ("sample_id", "token_hash", "image_hash")]
    h = hashlib.sha256()
    for sid, th, ih in sorted(zip(*cols)):
        h.update(f"{sid}\0{th}\0{ih}\n".encode())
    return h.hexdigest()[:16]
