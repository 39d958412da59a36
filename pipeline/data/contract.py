"""The manifest contract: the one definition of the manifest's columns, their types and its version.

Every phase reads the manifest through `read_manifest` / `read_manifest_meta` here, so a file of
another version is refused by name (never half-read by columns that happen to match), a column a
reader asks for is checked against this list (a typo is a bug, found at the first read), and a
missing file or column is one clear `ManifestFormatError` naming the file.

    schema = manifest_schema(["short", "long"])            # what `alignkd data build` writes
    t = read_manifest(path, ["sample_id", subset_column("short")])
    meta = read_manifest_meta(path)                         # file-level metadata, JSON-decoded
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data import ManifestError

# Bump when a column changes meaning or type; readers refuse every other version (rebuild with
# `alignkd data build`: a manifest is cheap next to a cache, and never edited in place).
MANIFEST_VERSION = "1"

# one row per sample (docs/CONTRACTS.md); plus one `in_<subset>` bool per subset of data.subsets
COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("sample_id", pa.string()),  # "<dataset>/<record id>", unique
    ("dataset", pa.string()),
    ("stage", pa.string()),  # pretrain | finetune
    ("template", pa.string()),  # plain | v1
    ("record_index", pa.int64()),  # position of the record in its JSON
    ("image", pa.string()),  # the record's image field ("" for text-only)
    ("image_path", pa.string()),  # resolved under image_root
    ("image_hash", pa.string()),
    ("input_ids", pa.list_(pa.int32())),  # [L], one IMAGE_TOKEN_INDEX at most
    ("labels", pa.list_(pa.int32())),  # [L], IGNORE_INDEX where unsupervised
    ("token_hash", pa.string()),
    ("embedded_len", pa.int32()),  # L - 1 + num_vision_tokens with an image
    ("n_text_after_image", pa.int32()),
    ("n_response", pa.int32()),
)
COLUMN_NAMES: tuple[str, ...] = tuple(n for n, _ in COLUMNS)
SUBSET_PREFIX = "in_"


class ManifestFormatError(ManifestError, ValueError):
    """A manifest file is missing, of another version, or lacks columns a reader needs."""


def subset_column(subset: str) -> str:
    """The bool column that marks the rows of `subset`."""
    return SUBSET_PREFIX + subset


def manifest_schema(subsets: Sequence[str]) -> pa.Schema:
    """The manifest's Arrow schema for these subsets (without the file-level metadata)."""
    return pa.schema([*COLUMNS, *((subset_column(s), pa.bool_()) for s in subsets)])


def read_manifest_meta(path: str | Path) -> dict[str, Any]:
    """The file-level metadata (tokenizer_fingerprint, num_vision_tokens, subsets {name: limit},
    datasets, build_command, ...), JSON-decoded; refuses a missing file or another version."""
    return _meta(path, _schema(path))


def read_manifest(path: str | Path, columns: Sequence[str]) -> pa.Table:
    """These columns of the manifest at `path`, after checking its version and that it has them."""
    unknown = [c for c in columns if c not in COLUMN_NAMES and not c.startswith(SUBSET_PREFIX)]
    if unknown:  # a reader asked for a column the contract does not define: a bug, not bad input
        raise KeyError(f"manifest columns {unknown} are not in the contract (pipeline/data/contract.py)")
    schema = _schema(path)
    _meta(path, schema)
    missing = [c for c in columns if c not in schema.names]
    if missing:
        subsets = [n[len(SUBSET_PREFIX):] for n in schema.names if n.startswith(SUBSET_PREFIX)]
        raise ManifestFormatError(f"manifest {path} lacks column(s) {missing} (subsets it has: {subsets}); "
                                  "rebuild it with `alignkd data build`")
    return pq.read_table(path, columns=list(columns))


def subsets_in(path: str | Path) -> list[str]:
    """The subsets a manifest marks (its `in_<subset>` columns)."""
    return [n[len(SUBSET_PREFIX):] for n in _schema(path).names if n.startswith(SUBSET_PREFIX)]


def _schema(path: str | Path) -> pa.Schema:
    p = Path(path)
    if not p.is_file():
        raise ManifestFormatError(f"manifest {p} not found: build it with `alignkd data build`")
    try:
        return pq.read_schema(p)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestFormatError(f"manifest {p} is not a readable parquet file ({exc}); rebuild it with "
                                  "`alignkd data build`") from exc


def _meta(path: str | Path, schema: pa.Schema) -> dict[str, Any]:
    raw = schema.metadata or {}
    try:
        meta = {k.decode(): json.loads(v) for k, v in raw.items() if not k.startswith(b"ARROW:")}
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestFormatError(f"manifest {path}: file metadata is not JSON ({exc}); rebuild it") from exc
    version = meta.get("manifest_version")
    if version != MANIFEST_VERSION:
        found = "none (not written by `alignkd data build`)" if version is None else repr(version)
        raise ManifestFormatError(f"manifest {path} has version {found}; this alignkd reads version "
                                  f"{MANIFEST_VERSION!r}: rebuild it with `alignkd data build`")
    return meta
