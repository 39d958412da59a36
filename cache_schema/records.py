"""On-disk paths, the root metadata and the per-unit commit record (plain JSON files, written
atomically: temp file → fsync → rename).

    <store>/zarr.json                  root group; attributes["alignkd_cache"] = root_meta(prov)
    <store>/units/zarr.json            group of committed units
    <store>/units/<unit_id>/           one zarr group per unit (visible only once complete)
        zarr.json, <array>/...         1-D sharded arrays (schema.unit_arrays)
        commit.json                    the unit's record, written last
    <store>/staging/<unit_id>.<token>/ a unit being written (or left by a crash)
    <store>/index/                     written by finalize: samples.arrow, images.arrow, finalized.json
"""

from __future__ import annotations

import json
import os
import re
import zlib
from pathlib import Path

import numpy as np

from cache_schema.errors import CacheFormatError, CacheVersionError, IntegrityError
from cache_schema.provenance import FORMAT_NAME, SCHEMA_VERSION, Provenance, version_problem
from cache_schema.schema import unit_arrays

UNIT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
COMMIT = "commit.json"
UNIT_FORMAT = FORMAT_NAME + "/unit"


def check_unit_id(unit_id: str) -> str:
    if not isinstance(unit_id, str) or not UNIT_ID_RE.match(unit_id):
        raise ValueError(
            f"bad unit id {unit_id!r}: use 1-128 chars of [A-Za-z0-9_.-], starting alphanumeric "
            "(it becomes a directory name)"
        )
    return unit_id


def canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def crc32(data: bytes | np.ndarray) -> int:
    """zlib CRC-32 of raw bytes / of an array's C-order stored bytes."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).view(np.uint8).data
    return zlib.crc32(data) & 0xFFFFFFFF


def fsync_path(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under root, so a commit marker never outlives its data."""
    for d, _, files in os.walk(root):
        for f in files:
            fsync_path(Path(d) / f)
        fsync_path(Path(d))


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk: leave no half file behind (a kill's is swept by the next finalize)
        tmp.unlink(missing_ok=True)
        raise


def layout_dict(prov: Provenance) -> dict:
    """Self-description of the unit arrays (golden-tested)."""
    return {
        a.name: {"kind": a.kind, "dtype": a.dtype.str, "codec": a.codec, "chunk_elems": a.chunk_elems,
                 "shard_elems": a.chunk_elems * prov.encoding.shard_chunks}
        for a in unit_arrays(prov)
    }


def root_meta(prov: Provenance, projector: dict | None = None, first_layer: dict | None = None) -> dict:
    """projector: the teacher projector's tensor specs (cache_schema.projector), None if not kept;
    first_layer: {"tensors": specs, "config": the teacher's config.json} when attention is recomputed."""
    return {"format": FORMAT_NAME, "schema_version": SCHEMA_VERSION, "provenance": prov.to_dict(),
            "layout": layout_dict(prov), "projector": projector, "first_layer": first_layer}


def provenance_crc(prov: Provenance) -> int:
    return crc32(canonical(prov.identity()))


def read_root(path: Path) -> Provenance:
    """Provenance of the store at `path` (refusing non-stores and unknown versions)."""
    return read_root_meta(path)[0]


def read_root_meta(path: Path) -> tuple[Provenance, dict]:
    """(provenance, the root's alignkd_cache attributes) of the store at `path`."""
    p = Path(path) / "zarr.json"
    if not p.is_file():
        raise CacheFormatError(f"{path}: not an alignkd cache (no zarr.json); create it with CacheStore.create_or_open")
    try:
        meta = json.loads(p.read_bytes())["attributes"]["alignkd_cache"]
        if not isinstance(meta, dict):
            raise TypeError(f"attributes.alignkd_cache is a {type(meta).__name__}")
    except (ValueError, KeyError, TypeError) as e:
        raise CacheFormatError(f"{p}: not an alignkd cache root (no attributes.alignkd_cache): {e}") from e
    if meta.get("format") != FORMAT_NAME:
        raise CacheFormatError(f"{p}: format expected {FORMAT_NAME!r}, got {meta.get('format')!r}")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise CacheVersionError(f"{path}: {version_problem(meta.get('schema_version'))}")
    if not isinstance(meta.get("provenance"), dict):
        raise CacheFormatError(f"{p}: attributes.alignkd_cache.provenance is missing or not an object")
    prov = Provenance.from_dict(meta["provenance"], where=str(path))
    if meta.get("layout") != layout_dict(prov):
        raise CacheFormatError(f"{p}: layout does not match schema {SCHEMA_VERSION} for its provenance")
    if prov.projector_tokens == "recompute" and not isinstance(meta.get("projector"), dict):
        raise CacheFormatError(f"{p}: projector_tokens is 'recompute' but the store holds no teacher projector")
    if prov.attention == "recompute" and not isinstance(meta.get("first_layer"), dict):
        raise CacheFormatError(f"{p}: attention is 'recompute' but the store holds no teacher first layer")
    return prov, meta


def make_record(body: dict) -> bytes:
    body = dict(body, format=UNIT_FORMAT, schema_version=SCHEMA_VERSION)
    body["record_crc32"] = crc32(canonical(body))
    return canonical(body)


def load_record(unit_dir: Path, prov: Provenance) -> dict:
    """Parse and check a unit's commit.json (own CRC, version, provenance, lengths)."""
    p = unit_dir / COMMIT
    try:
        rec = json.loads(p.read_bytes())
    except (OSError, ValueError) as e:
        raise IntegrityError(f"unit {unit_dir.name}: unreadable commit record {p}: {e}") from e
    body = {k: v for k, v in rec.items() if k != "record_crc32"}
    if rec.get("record_crc32") != crc32(canonical(body)):
        raise IntegrityError(f"unit {unit_dir.name}: commit record {p} fails its CRC (corrupted)")
    if rec.get("format") != UNIT_FORMAT or rec.get("schema_version") != SCHEMA_VERSION:
        raise CacheVersionError(
            f"unit {unit_dir.name}: record format/version expected {UNIT_FORMAT!r}/{SCHEMA_VERSION}, "
            f"got {rec.get('format')!r}/{rec.get('schema_version')!r}"
        )
    if rec.get("provenance_crc32") != provenance_crc(prov):
        raise IntegrityError(f"unit {unit_dir.name}: written under a different provenance than the store's")
    return rec


def committed_units(root: Path) -> list[str]:
    d = Path(root) / "units"
    if not d.is_dir():
        return []
    return sorted(e.name for e in os.scandir(d) if e.is_dir() and (Path(e.path) / COMMIT).is_file())


def incomplete_units(root: Path) -> list[str]:
    """Unit ids with a staging directory (or a unit dir without commit record) but no commit."""
    done = set(committed_units(root))
    found = set()
    st = Path(root) / "staging"
    if st.is_dir():
        found |= {e.name.rsplit(".", 1)[0] for e in os.scandir(st) if e.is_dir() and "." in e.name and not e.name.startswith(".")}
    ud = Path(root) / "units"
    if ud.is_dir():
        found |= {e.name for e in os.scandir(ud) if e.is_dir() and not (Path(e.path) / COMMIT).is_file()}
    return sorted(found - done)
