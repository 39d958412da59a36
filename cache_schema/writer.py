"""Writer side (teacher_dump): many concurrent writers, one store, no locks.

Each unit of work is written by exactly one `UnitWriter` into its own staging directory (its own
zarr arrays: zarr-python loses data when two processes write one shard), then made visible by one
atomic `rename` into `units/<unit_id>/` after every file and the commit record (written last,
holding per-sample checksums) are fsync'ed. A crash leaves only a staging directory, which no
reader looks at; a re-run of the unit writes a fresh one and the commit removes the leftovers
whose writer is dead (owner.py: never a live writer's).
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import socket
from pathlib import Path
from typing import Iterable

import numpy as np
import zarr

from cache_schema.codecs import codec_chain
from cache_schema.create import create_store
from cache_schema.errors import CacheError, SampleValidationError, UnitExistsError
from cache_schema.index import FinalizeReport
from cache_schema.leftovers import remove_leftovers
from cache_schema.owner import owner_token
from cache_schema.provenance import Provenance, check_provenance
from cache_schema.records import (
    COMMIT,
    atomic_write,
    check_unit_id,
    committed_units,
    crc32,
    fsync_path,
    fsync_tree,
    incomplete_units,
    make_record,
    provenance_crc,
    read_root,
)
from cache_schema.schema import SampleTargets, dims_columns, encode_sample, unit_arrays, validate_image


class CacheStore:
    """Handle on a store for writers and for finalize. Cheap; safe to create in every actor."""

    def __init__(self, path: str | os.PathLike, provenance: Provenance):
        self.path = Path(path)
        self.provenance = provenance

    @classmethod
    def create_or_open(cls, path: str | os.PathLike, provenance: Provenance,
                       projector: dict[str, np.ndarray] | None = None,
                       first_layer: tuple[dict, dict] | None = None) -> "CacheStore":
        """Create the store, or open an existing one whose provenance matches (created_by /
        created_at excepted). Safe to race from many processes and to kill at any point: the
        skeleton is built aside and renamed into place (cache_schema.create). projector: the
        teacher projector's tensors (name → float32), kept once in a new store (needed when
        provenance.projector_tokens is "recompute"; ignored when the store exists); first_layer:
        (the teacher's embedding / layer-0 norm / q,k tensors, its config.json dict), needed when
        provenance.attention is "recompute"."""
        if not provenance.created_at:
            provenance = provenance.stamped()
        create_store(path, provenance, projector, first_layer)
        return cls._open_checked(Path(path), provenance)

    @classmethod
    def _open_checked(cls, path: Path, provenance: Provenance) -> "CacheStore":
        stored = read_root(path)
        check_provenance(f"existing cache {path}", provenance.identity(), stored)
        return cls(path, stored)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "CacheStore":
        """Open an existing store with its own provenance (finalize, verify, tools)."""
        return cls(Path(path), read_root(Path(path)))

    def remove_leftovers(self) -> list[Path]:
        """Delete staging dirs and finalize temp files whose writer is gone (never a live one's)."""
        return remove_leftovers(self.path, index_tmp=True)

    def is_unit_complete(self, unit_id: str) -> bool:
        return (self.path / "units" / check_unit_id(unit_id) / COMMIT).is_file()

    def committed_units(self) -> list[str]:
        return committed_units(self.path)

    def incomplete_units(self) -> list[str]:
        return incomplete_units(self.path)

    def unit_writer(self, unit_id: str) -> "UnitWriter":
        """A writer that owns unit `unit_id` until commit() (one writer per unit at a time)."""
        if self.is_unit_complete(unit_id):
            raise UnitExistsError(
                f"unit {unit_id!r} is already committed in {self.path}; skip it (store.is_unit_complete)"
            )
        return UnitWriter(self, unit_id)

    def finalize(self, expected_sample_ids: Iterable[str]) -> "FinalizeReport":
        """Build the sample/image index and check coverage (see index.finalize_store)."""
        from cache_schema.index import finalize_store

        return finalize_store(self, expected_sample_ids)


class UnitWriter:
    """Writes one unit. Use as a context manager: a clean exit commits, an exception discards.

    Memory: per array at most one shard (chunk_bytes × shard_chunks) is buffered before it is
    appended shard-aligned (so zarr never read-modify-writes a shard).
    """

    def __init__(self, store: CacheStore, unit_id: str):
        self.store, self.unit_id, self.prov = store, check_unit_id(unit_id), store.provenance
        self._dir = store.path / "staging" / f"{unit_id}.{owner_token()}"  # owner in the name: see owner.py
        self._specs = {a.name: a for a in unit_arrays(self.prov)}
        group = zarr.open_group(str(self._dir), mode="w-", zarr_format=3, attributes={"unit_id": unit_id})
        shard = self.prov.encoding.shard_chunks
        self._arrays = {
            a.name: group.create_array(
                name=a.name, shape=(0,), dtype=a.dtype, chunks=(a.chunk_elems,),
                shards=(a.chunk_elems * shard,), compressors=codec_chain(a.codec, a.dtype.itemsize),
                fill_value=0, dimension_names=("flat",),
            )
            for a in self._specs.values()
        }
        self._buf: dict[str, list[np.ndarray]] = {n: [] for n in self._specs}
        self._buflen = dict.fromkeys(self._specs, 0)
        self._len = dict.fromkeys(self._specs, 0)
        self._cols: dict[str, list] = {c: [] for c in ["sample_id", "token_hash", "image_hash"] + dims_columns(self.prov)}
        self._crc: dict[str, list[int]] = {n: [] for n in self._specs}
        self._ids: set[str] = set()
        self._images: list[str] = []
        self._image_set: set[str] = set()
        self._state = "open"

    # -- adding -------------------------------------------------------------------------------

    def add_sample(self, s: SampleTargets) -> None:
        """Validate (dtype/shape/range, naming the sample), encode and buffer one sample."""
        self._check_open()
        if s.sample_id in self._ids:
            raise SampleValidationError(f"sample {s.sample_id!r} added twice to unit {self.unit_id!r}")
        dims, parts = encode_sample(s, self.prov)
        self._ids.add(s.sample_id)
        self._cols["sample_id"].append(s.sample_id)
        self._cols["token_hash"].append(s.token_hash)
        self._cols["image_hash"].append(s.image_hash or "")
        for c, v in dims.items():
            self._cols[c].append(v)
        for name, data in parts.items():
            self._push(name, data)

    def add_image(self, image_hash: str, tokens: np.ndarray | None) -> None:
        """Record one unique image (once per store) with its projector tokens [|V|, D_t] float32;
        a store with projector_tokens "recompute" records the image only (tokens may be None)."""
        self._check_open()
        if image_hash in self._image_set:
            raise SampleValidationError(
                f"image {image_hash!r} added twice to unit {self.unit_id!r} (check has_image first)"
            )
        stored = self.prov.projector_tokens == "stored"
        data = validate_image(image_hash, tokens, self.prov) if stored else None
        if not stored and (not isinstance(image_hash, str) or not image_hash):
            raise SampleValidationError(f"image hash must be a non-empty str, got {image_hash!r}")
        self._images.append(image_hash)
        self._image_set.add(image_hash)
        if data is not None:
            self._push("image_tokens", data)

    def has_image(self, image_hash: str) -> bool:
        return image_hash in self._image_set

    @property
    def n_samples(self) -> int:
        return len(self._cols["sample_id"])

    def _push(self, name: str, data: np.ndarray) -> None:
        assert data.dtype == self._specs[name].dtype and data.ndim == 1, (name, data.dtype)
        self._crc[name].append(crc32(data))
        self._buf[name].append(data)
        self._buflen[name] += data.size
        shard = self._specs[name].chunk_elems * self.prov.encoding.shard_chunks
        if self._buflen[name] >= shard:
            self._flush(name, shard)

    def _flush(self, name: str, shard: int | None) -> None:
        """Append the buffered elements (only whole shards unless shard is None)."""
        if not self._buflen[name]:
            return
        data = np.concatenate(self._buf[name])
        n = data.size if shard is None else (data.size // shard) * shard
        self._arrays[name].append(data[:n])
        self._len[name] += n
        rest = data[n:]
        self._buf[name], self._buflen[name] = ([rest] if rest.size else []), rest.size

    # -- commit / abort -------------------------------------------------------------------------

    def commit(self) -> dict:
        """Flush, fsync, write the commit record last, rename into units/. Returns the record."""
        self._check_open()
        for name in self._specs:
            self._flush(name, None)
        body = {
            "unit_id": self.unit_id,
            "n_samples": self.n_samples,
            "n_images": len(self._images),
            "provenance_crc32": provenance_crc(self.prov),
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "writer": {"host": socket.gethostname(), "pid": os.getpid()},
            "samples": self._cols,
            "images": {"image_hash": self._images},
            "lengths": self._len,
            "crc32": self._crc,
        }
        fsync_tree(self._dir)
        atomic_write(self._dir / COMMIT, make_record(body))
        final = self.store.path / "units" / self.unit_id
        try:
            os.rename(self._dir, final)
        except OSError as e:
            self.abort()
            if final.exists():
                raise UnitExistsError(
                    f"unit {self.unit_id!r} was committed by another writer meanwhile; this copy was discarded"
                ) from e
            raise CacheError(f"unit {self.unit_id!r}: could not move {self._dir} to {final}: {e}") from e
        fsync_path(final.parent)
        self._state = "committed"
        # leftovers of crashed earlier attempts of this unit; a live concurrent writer's dir is kept
        remove_leftovers(self.store.path, unit_id=self.unit_id)
        return body

    def abort(self) -> None:
        """Discard everything written for this unit (nothing was visible)."""
        if self._state == "open":
            shutil.rmtree(self._dir, ignore_errors=True)
        self._state = "aborted"

    def _check_open(self) -> None:
        if self._state != "open":
            raise CacheError(f"unit {self.unit_id!r}: writer is {self._state}")

    def __enter__(self) -> "UnitWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if self._state == "open":
                self.commit()
        else:
            self.abort()  # never publish a unit whose producer failed
