"""Reader side (student_train): verified random access and prefetched streaming.

Every slice read is checked twice: zarr's crc32c codec checks each chunk (and each shard index),
and the slice's bytes are compared with the per-sample CRC-32 in the unit's commit record, so a
corruption is reported naming the sample (or image) and the array.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import zarr

from cache_schema.errors import CacheFormatError, IntegrityError, NotFinalizedError
from cache_schema.index import Index, bsearch, load_index
from cache_schema.projector import read_first_layer, read_projector
from cache_schema.provenance import Provenance, check_provenance
from cache_schema.records import crc32, load_record, read_root
from cache_schema.schema import SampleTargets, decode_image, decode_sample, dims_columns, element_counts, unit_arrays


class _Unit:
    """One committed unit: its record, offsets per array and lazily opened zarr arrays."""

    def __init__(self, root: Path, unit_id: str, prov: Provenance, expect_crc: int):
        self.dir = root / "units" / unit_id
        self.id = unit_id
        self.rec = load_record(self.dir, prov)
        if self.rec["record_crc32"] != expect_crc:
            raise NotFinalizedError(f"{root}: unit {unit_id} was replaced after finalize; re-run finalize")
        s = self.rec["samples"]
        counts = element_counts(prov, {c: s[c] for c in dims_columns(prov)})
        if prov.projector_tokens == "stored":
            v_d = prov.num_vision_tokens * prov.teacher_hidden_size
            counts["image_tokens"] = np.full(self.rec["n_images"], v_d, np.int64)
        self.offsets = {n: np.concatenate([[0], np.cumsum(c)]).astype(np.int64) for n, c in counts.items()}
        for n, off in self.offsets.items():
            if off[-1] != self.rec["lengths"][n]:
                raise IntegrityError(f"unit {unit_id}: array {n} holds {self.rec['lengths'][n]} elements, "
                                     f"its records add up to {off[-1]}")
        self._arrays: dict[str, zarr.Array] = {}
        self._dtypes = {a.name: a.dtype for a in unit_arrays(prov)}

    def array(self, name: str, label: str = "") -> zarr.Array:
        if name not in self._arrays:
            a = zarr.open_array(str(self.dir / name), mode="r", zarr_format=3)
            # the per-sample CRCs cover bytes, not their meaning: an edited zarr.json dtype reads the
            # same bytes as other numbers with every checksum passing, so check it against the schema
            want = (self._dtypes[name], (self.rec["lengths"][name],))
            if (a.dtype, a.shape) != want:
                raise IntegrityError(
                    f"{label}array {name} of unit {self.id}: zarr.json says dtype {a.dtype} shape {a.shape}, "
                    f"the commit record and schema say dtype {want[0]} shape {want[1]}; the store's metadata was "
                    "edited or corrupted, run `alignkd cache verify`")
            self._arrays[name] = a
        return self._arrays[name]

    def read(self, name: str, first: int, last: int, what: str, labels: list[str]) -> list[np.ndarray]:
        """Slices of rows first..last-1 (contiguous) of `name`, each checked against its CRC."""
        off = self.offsets[name]
        a, b = int(off[first]), int(off[last])
        try:
            arr = self.array(name, f"{what} {labels[0]!r}: ")
            flat = arr[a:b] if b > a else np.zeros(0, arr.dtype)
        except IntegrityError:
            raise
        except (ValueError, OSError, RuntimeError) as e:  # zarr's crc32c codec / decompressor failures
            raise IntegrityError(f"{what} {labels[0]!r}: array {name} of unit {self.id}: chunk unreadable "
                                 f"({e}); the store is corrupted, run `alignkd cache verify`") from e
        out = []
        crcs = self.rec["crc32"][name]
        for r, label in zip(range(first, last), labels):
            part = flat[int(off[r]) - a:int(off[r + 1]) - a]
            if crc32(part) != crcs[r]:
                raise IntegrityError(f"{what} {label!r}: array {name} of unit {self.id} fails its checksum; "
                                     "the store is corrupted, run `alignkd cache verify`")
            out.append(part)
        return out


class CacheReader:
    """CacheReader(path, expect={"teacher_fingerprint": ..., ...}) on a finalised store.

    expect: any subset of Provenance fields (plain values; `encoding` may be a partial dict);
    each differing field is named with expected vs got. Picklable: only (path, expect) travel,
    the index and zarr handles are reopened lazily in the process that uses them.
    """

    def __init__(self, path: str | os.PathLike, expect: dict | Provenance | None = None, *,
                 max_open_units: int = 64):
        self.path = Path(path)
        self.expect = expect.identity() if isinstance(expect, Provenance) else (dict(expect) if expect else None)
        self.max_open_units = max_open_units
        self.provenance: Provenance = read_root(self.path)
        check_provenance(f"cache {self.path}", self.expect, self.provenance)
        self._state_init()
        self._load()

    def _state_init(self) -> None:
        self._index: Index | None = None
        self._units: OrderedDict[int, _Unit] = OrderedDict()
        self._lock = threading.Lock()

    def _load(self) -> Index:
        if self._index is None:
            self._index = load_index(self.path)
            self._ids = self._index.samples.column("sample_id").combine_chunks()
            self._hashes = self._index.images.column("image_hash").combine_chunks()
        return self._index

    def __getstate__(self) -> dict:
        return {"path": self.path, "expect": self.expect, "max_open_units": self.max_open_units,
                "provenance": self.provenance}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._state_init()  # the index is loaded on first use in the new process

    # -- lookups -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._load().samples.num_rows

    def __contains__(self, sample_id: str) -> bool:
        self._load()
        return bsearch(self._ids, sample_id) is not None

    @property
    def sample_ids(self) -> list[str]:
        """All sample ids, sorted."""
        self._load()
        return self._ids.to_pylist()

    def meta(self, sample_id: str) -> dict:
        """Index row of a sample (no payload read): unit, row, token_hash, image_hash, n_text, n_resp."""
        idx = self._load()
        pos = bsearch(self._ids, sample_id)
        if pos is None:
            raise KeyError(f"sample {sample_id!r} is not in cache {self.path}")
        row = {c: idx.samples.column(c)[pos].as_py() for c in idx.samples.column_names}
        row["unit"] = idx.meta["units"][row["unit"]]
        return row

    def _unit(self, ui: int) -> _Unit:
        with self._lock:
            u = self._units.get(ui)
            if u is not None:
                self._units.move_to_end(ui)
                return u
        meta = self._load().meta
        u = _Unit(self.path, meta["units"][ui], self.provenance, meta["unit_record_crc32"][ui])
        with self._lock:
            self._units[ui] = u
            while len(self._units) > self.max_open_units:
                self._units.popitem(last=False)
        return u

    def _locate(self, sample_id: str) -> tuple[int, int]:
        pos = bsearch(self._ids, sample_id)
        if pos is None:
            raise KeyError(f"sample {sample_id!r} is not in cache {self.path}")
        s = self._index.samples
        return s.column("unit")[pos].as_py(), s.column("row")[pos].as_py()

    # -- payload -------------------------------------------------------------------------------

    def get(self, sample_id: str) -> SampleTargets:
        """One sample, decoded to float32/int64, checksums verified."""
        self._load()
        ui, row = self._locate(sample_id)
        return self._read_rows(ui, row, row + 1)[0]

    def _read_rows(self, ui: int, first: int, last: int) -> list[SampleTargets]:
        u = self._unit(ui)
        s = u.rec["samples"]
        labels = s["sample_id"][first:last]
        raw = {a.name: u.read(a.name, first, last, "sample", labels)
               for a in unit_arrays(self.provenance) if a.kind == "sample"}
        out = []
        for i, r in enumerate(range(first, last)):
            meta = {c: v[r] for c, v in s.items()}
            out.append(decode_sample(meta, {n: parts[i] for n, parts in raw.items()}, self.provenance))
        return out

    def image_tokens(self, image_hash: str) -> np.ndarray:
        """Projector tokens [|V|, D_t] float32 of one image, checksum verified (a store with
        projector_tokens "stored"; otherwise see `teacher_projector`)."""
        if self.provenance.projector_tokens != "stored":
            raise CacheFormatError(
                f"cache {self.path} stores no projector tokens (projector_tokens: {self.provenance.projector_tokens}): "
                "recompute them with its teacher projector (CacheReader.teacher_projector) from a tower with "
                f"fingerprint {self.provenance.vision_tower_fingerprint}")
        idx = self._load()
        pos = bsearch(self._hashes, image_hash)
        if pos is None:
            raise KeyError(f"image {image_hash!r} is not in cache {self.path}")
        ui, row = idx.images.column("unit")[pos].as_py(), idx.images.column("row")[pos].as_py()
        raw = self._unit(ui).read("image_tokens", row, row + 1, "image", [image_hash])[0]
        return decode_image(raw, self.provenance)

    def teacher_projector(self) -> dict[str, np.ndarray]:
        """The teacher projector's weights kept in the store (name → float32), checksums verified."""
        return read_projector(self.path)

    def teacher_first_layer(self) -> tuple[dict[str, np.ndarray], dict]:
        """(the teacher's first-layer tensors, its config.json) of an attention-recompute store."""
        return read_first_layer(self.path)

    def iter_samples(self, ids: Iterable[str] | None = None, prefetch: int = 8,
                     max_run: int = 32) -> Iterator[SampleTargets]:
        """Yield samples in the order of `ids` (default: all, sorted) while a background thread
        reads up to `prefetch` ahead. Consecutive ids stored next to each other in one unit (a
        run of up to `max_run`) are read with one slice per array. Errors surface in order."""
        self._load()
        ids = self.sample_ids if ids is None else ids
        q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                run: list[tuple[int, int]] = []  # consecutive rows of one unit, read with one slice per array

                def flush() -> bool:
                    if run:
                        for s in self._read_rows(run[0][0], run[0][1], run[-1][1] + 1):
                            if not put(("ok", s)):
                                return False
                    return True

                for sid in ids:  # locate lazily: millions of ids must not delay the first sample
                    if stop.is_set():
                        return
                    ui, row = self._locate(sid)
                    if run and len(run) < max_run and (ui, row) == (run[-1][0], run[-1][1] + 1):
                        run.append((ui, row))
                        continue
                    if not flush():
                        return
                    run = [(ui, row)]
                if flush():
                    put(("end", None))
            except BaseException as e:  # noqa: BLE001 — re-raised in the consumer
                put(("err", e))

        t = threading.Thread(target=work, name="cache-prefetch", daemon=True)
        t.start()
        try:
            while True:
                kind, item = q.get()
                if kind == "ok":
                    yield item
                elif kind == "end":
                    return
                else:
                    raise item
        finally:
            stop.set()
            t.join(timeout=5)

    def __repr__(self) -> str:
        return f"CacheReader({str(self.path)!r}, samples={len(self) if self._index else '?'})"
