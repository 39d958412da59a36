"""verify: read every chunk of every committed unit (zarr's crc32c checks each), compare every
sample/image slice with its committed CRC-32, check the index against the units, list
incomplete units. Reports faults instead of stopping at the first."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import zarr

from cache_schema.errors import CacheError
from cache_schema.index import load_index
from cache_schema.leftovers import find_leftovers
from cache_schema.projector import read_projector
from cache_schema.records import committed_units, crc32, incomplete_units, load_record, read_root, read_root_meta
from cache_schema.schema import dims_columns, element_counts, unit_arrays

Progress = Callable[[int, int, str], None]  # (units done, units total, unit id)


@dataclass
class VerifyReport:
    path: str
    n_units: int = 0
    n_samples: int = 0
    n_images: int = 0
    bytes_read: int = 0
    finalized: bool = False
    incomplete_units: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    # harmless to readers (never looked at) but not a clean store: a killed writer's or finalize's
    # leftovers; the next teacher-dump removes those whose writer is gone
    leftovers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.finalized and not self.faults and not self.incomplete_units


def verify_store(path: str | os.PathLike, expected_sample_ids: Iterable[str] | None = None,
                 progress: Progress | None = None) -> VerifyReport:
    root = Path(path)
    prov = read_root(root)  # refuses non-stores / unknown versions outright
    rep = VerifyReport(str(root), incomplete_units=incomplete_units(root))
    units = committed_units(root)
    rep.n_units = len(units)
    rec_crc: dict[str, int] = {}
    stored_ids: list[str] = []
    for i, u in enumerate(units):
        try:
            rec = load_record(root / "units" / u, prov)
        except CacheError as e:
            rep.faults.append(str(e))
            continue
        rec_crc[u] = rec["record_crc32"]
        stored_ids += rec["samples"]["sample_id"]
        rep.n_samples += rec["n_samples"]
        rep.n_images += rec["n_images"]
        _verify_unit(root / "units" / u, rec, prov, rep)
        if progress:
            progress(i + 1, len(units), u)
    _verify_index(root, rec_crc, rep)
    _verify_projector(root, rep)
    rep.leftovers = find_leftovers(root, set(units))
    if expected_sample_ids is not None:
        exp, have = set(expected_sample_ids), set(stored_ids)
        miss, extra = sorted(exp - have), sorted(have - exp)
        if miss:
            rep.faults.append(f"{len(miss)} expected sample(s) missing, e.g. {miss[:5]}")
        if extra:
            rep.faults.append(f"{len(extra)} stored sample(s) not expected, e.g. {extra[:5]}")
    return rep


def _verify_unit(udir: Path, rec: dict, prov, rep: VerifyReport) -> None:
    s = rec["samples"]
    counts = element_counts(prov, {c: s[c] for c in dims_columns(prov)})
    counts["image_tokens"] = np.full(rec["n_images"], prov.num_vision_tokens * prov.teacher_hidden_size, np.int64)
    for spec in unit_arrays(prov):
        name, labels = spec.name, (s["sample_id"] if spec.kind == "sample" else rec["images"]["image_hash"])
        what = "sample" if spec.kind == "sample" else "image"
        off = np.concatenate([[0], np.cumsum(counts[name])]).astype(np.int64)
        where = f"unit {udir.name}, array {name}"
        try:
            arr = zarr.open_array(str(udir / name), mode="r", zarr_format=3)
        except Exception as e:  # noqa: BLE001 — any failure to open is a fault to report
            rep.faults.append(f"{where}: cannot open ({e})")
            continue
        if arr.dtype != spec.dtype or arr.shape != (rec["lengths"][name],) or off[-1] != arr.shape[0]:
            rep.faults.append(f"{where}: dtype/shape {arr.dtype}{arr.shape} does not match the record "
                              f"({spec.dtype}, {rec['lengths'][name]} elements, samples add up to {off[-1]})")
            continue
        try:
            flat = arr[:]
        except Exception:  # noqa: BLE001 — a chunk fails its crc32c: find the samples it holds
            flat = None
        crcs = rec["crc32"][name]
        for r, label in enumerate(labels):
            a, b = int(off[r]), int(off[r + 1])
            try:
                part = flat[a:b] if flat is not None else (arr[a:b] if b > a else np.zeros(0, spec.dtype))
            except Exception as e:  # noqa: BLE001
                rep.faults.append(f"{where}: {what} {label!r}: chunk unreadable ({str(e)[:80]})")
                continue
            if crc32(part) != crcs[r]:
                rep.faults.append(f"{where}: {what} {label!r} fails its checksum")
        rep.bytes_read += int(off[-1]) * spec.dtype.itemsize


def _verify_projector(root: Path, rep: VerifyReport) -> None:
    """The teacher projector kept in the store (if any) against its listed checksums."""
    meta = read_root_meta(root)[1]
    for group in ("projector", "first_layer"):
        if isinstance(meta.get(group), dict):
            try:
                read_projector(root, group)
            except CacheError as e:
                rep.faults.append(str(e))


def _verify_index(root: Path, rec_crc: dict[str, int], rep: VerifyReport) -> None:
    if not (root / "index" / "finalized.json").is_file():
        rep.faults.append("store is not finalised (no index); run finalize")
        return
    try:
        idx = load_index(root)
    except CacheError as e:
        rep.faults.append(str(e))
        return
    rep.finalized = True
    for u, c in zip(idx.meta["units"], idx.meta["unit_record_crc32"]):
        if u in rec_crc and rec_crc[u] != c:
            rep.faults.append(f"unit {u}: commit record changed since finalize; re-run finalize")
    if idx.samples.num_rows != rep.n_samples or idx.images.num_rows != rep.n_images:
        rep.faults.append(f"index lists {idx.samples.num_rows} samples / {idx.images.num_rows} images, "
                          f"units hold {rep.n_samples} / {rep.n_images}; re-run finalize")
