"""The manifest as the dump sees it: the subset's rows, the file-level metadata and a digest of
exactly what the cache depends on."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from teacher_dump.plan import SAMPLE_COLUMNS

# columns the dump reads (SAMPLE_COLUMNS for the actors, `template` for the provenance)
READ_COLUMNS = tuple(SAMPLE_COLUMNS) + ("template",)


@dataclass
class SubsetRows:
    table: pa.Table  # the `in_{subset}` rows, READ_COLUMNS only
    meta: dict  # file-level metadata, JSON-decoded (tokenizer_fingerprint, num_vision_tokens, subsets, ...)


def read_meta(path: str | Path) -> dict:
    """File-level metadata of a manifest (pipeline.data.manifest writes it JSON-encoded)."""
    from pipeline.data.manifest import read_manifest_meta

    return read_manifest_meta(path)


def read_subset(path: str | Path, subset: str) -> SubsetRows:
    """Read the rows of `subset`. Raises ValueError naming the missing columns."""
    schema = pq.read_schema(path)
    flag = f"in_{subset}"
    missing = [c for c in READ_COLUMNS + (flag,) if c not in schema.names]
    if missing:
        raise ValueError(
            f"manifest {path} lacks column(s) {missing} (subsets it has: "
            f"{[n[3:] for n in schema.names if n.startswith('in_')]}); rebuild it with `alignkd data build`"
        )
    table = pq.read_table(path, columns=list(READ_COLUMNS) + [flag])
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
