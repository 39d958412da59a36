"""finalize: the sample/image index and the coverage check; loading the index for readers.

index/samples.arrow  Arrow IPC, sorted by sample_id: sample_id, unit (int32 → finalized.json
                     "units"), row (int32), token_hash, image_hash ("" = none), n_text, n_resp
index/images.arrow   sorted by image_hash: image_hash, unit, row
index/finalized.json units, each unit's record CRC, counts, CRC-32 of both Arrow files (written last)

Arrow IPC files are memory-mapped, so DataLoader workers share one copy through the page cache,
and lookups are a binary search over the sorted column (no per-process dict of 3.6M ids).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import pyarrow as pa

from cache_schema.errors import CoverageError, NotFinalizedError
from cache_schema.leftovers import remove_leftovers
from cache_schema.provenance import SCHEMA_VERSION
from cache_schema.records import (
    atomic_write,
    canonical,
    committed_units,
    crc32,
    incomplete_units,
    load_record,
    provenance_crc,
)

if TYPE_CHECKING:
    from cache_schema.writer import CacheStore

FINALIZED = "finalized.json"
_SHOW = 5


@dataclass
class FinalizeReport:
    n_samples: int
    n_images: int
    n_units: int
    unreferenced_images: list[str] = field(default_factory=list)  # stored but used by no sample
    incomplete_units: list[str] = field(default_factory=list)


def _few(xs: list, n: int = _SHOW, fmt=repr) -> str:
    xs = list(xs)
    return ", ".join(map(fmt, xs[:n])) + (f", … (+{len(xs) - n} more)" if len(xs) > n else "")


def finalize_store(store: "CacheStore", expected_sample_ids: Iterable[str]) -> FinalizeReport:
    """Read every commit record (no payload), check coverage, write the index atomically."""
    root, prov = store.path, store.provenance
    units = committed_units(root)
    cols: dict[str, list] = defaultdict(list)
    icols: dict[str, list] = defaultdict(list)
    rec_crc = []
    for ui, u in enumerate(units):
        rec = load_record(root / "units" / u, prov)
        rec_crc.append(rec["record_crc32"])
        s = rec["samples"]
        n = rec["n_samples"]
        for c in ("sample_id", "token_hash", "image_hash", "n_text", "n_resp"):
            cols[c] += s[c]
        cols["unit"] += [ui] * n
        cols["row"] += range(n)
        icols["image_hash"] += rec["images"]["image_hash"]
        icols["unit"] += [ui] * rec["n_images"]
        icols["row"] += range(rec["n_images"])

    expected = list(expected_sample_ids)
    problems = _coverage_problems(expected, cols, icols, units)
    incomplete = incomplete_units(root)
    if problems:
        hint = f"\nincomplete units (re-run them): {_few(incomplete)}" if incomplete else ""
        raise CoverageError(f"finalize {root}: " + "\n".join(problems) + hint)

    samples = pa.table({
        "sample_id": pa.array(cols["sample_id"], pa.string()),
        "unit": pa.array(cols["unit"], pa.int32()), "row": pa.array(cols["row"], pa.int32()),
        "token_hash": pa.array(cols["token_hash"], pa.string()),
        "image_hash": pa.array(cols["image_hash"], pa.string()),
        "n_text": pa.array(cols["n_text"], pa.int32()), "n_resp": pa.array(cols["n_resp"], pa.int32()),
    }).sort_by("sample_id")
    images = pa.table({
        "image_hash": pa.array(icols["image_hash"], pa.string()),
        "unit": pa.array(icols["unit"], pa.int32()), "row": pa.array(icols["row"], pa.int32()),
    }).sort_by("image_hash")
    idx = root / "index"
    idx.mkdir(exist_ok=True)
    remove_leftovers(root, staging=False, index_tmp=True)  # temp files of an earlier failed finalize
    (idx / FINALIZED).unlink(missing_ok=True)  # readers see "not finalised" while we rewrite
    meta = {"schema_version": SCHEMA_VERSION, "units": units, "unit_record_crc32": rec_crc,
            "n_samples": samples.num_rows, "n_images": images.num_rows,
            "provenance_crc32": provenance_crc(prov),
            "finalized_at": _dt.datetime.now(_dt.timezone.utc).isoformat()}
    for name, table in (("samples.arrow", samples), ("images.arrow", images)):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
        data = sink.getvalue().to_pybytes()
        atomic_write(idx / name, data)
        meta[name.split(".")[0] + "_crc32"] = crc32(data)
    atomic_write(idx / FINALIZED, canonical(meta))
    referenced = set(cols["image_hash"]) - {""}
    return FinalizeReport(samples.num_rows, images.num_rows, len(units),
                          sorted(set(icols["image_hash"]) - referenced), incomplete)


def _coverage_problems(expected: list[str], cols: dict, icols: dict, units: list[str]) -> list[str]:
    p = []
    exp_dup = [k for k, c in Counter(expected).items() if c > 1]
    if exp_dup:
        p.append(f"expected_sample_ids has {len(exp_dup)} duplicate id(s): {_few(exp_dup)}")
    where = defaultdict(list)
    for sid, ui in zip(cols["sample_id"], cols["unit"]):
        where[sid].append(units[ui])
    dup = {k: v for k, v in where.items() if len(v) > 1}
    if dup:
        p.append(f"{len(dup)} sample id(s) stored more than once: "
                 + _few([f"{k!r} in units {v}" for k, v in dup.items()], fmt=str))
    exp = set(expected)
    missing = [e for e in expected if e not in where]
    if missing:
        p.append(f"{len(missing)} of {len(exp)} expected sample(s) missing: {_few(missing)}")
    unexpected = sorted(k for k in where if k not in exp)
    if unexpected:
        p.append(f"{len(unexpected)} stored sample(s) not expected: {_few(unexpected)}")
    iwhere = defaultdict(list)
    for h, ui in zip(icols["image_hash"], icols["unit"]):
        iwhere[h].append(units[ui])
    idup = {k: v for k, v in iwhere.items() if len(v) > 1}
    if idup:
        p.append(f"{len(idup)} image hash(es) stored more than once (the planner must give each image "
                 "to one unit): " + _few([f"{k!r} in units {v}" for k, v in idup.items()], fmt=str))
    never = sorted((set(cols["image_hash"]) - {""}) - set(iwhere))
    if never:
        users = {h: s for s, h in zip(cols["sample_id"], cols["image_hash"]) if h in set(never)}
        p.append(f"{len(never)} image hash(es) referenced but never stored: "
                 + _few([f"{h!r} (sample {users[h]!r})" for h in never], fmt=str))
    return p


@dataclass
class Index:
    meta: dict
    samples: pa.Table
    images: pa.Table


def load_index(root: Path, check_units: bool = True) -> Index:
    """Memory-map the index, check its CRCs and that no unit changed since finalize."""
    idx = Path(root) / "index"
    fin = idx / FINALIZED
    if not fin.is_file():
        raise NotFinalizedError(f"{root}: not finalised (no index/{FINALIZED}); run CacheStore.finalize(expected_ids)")
    try:
        meta = json.loads(fin.read_bytes())
        units, rec_crcs = meta["units"], meta["unit_record_crc32"]
        want = {name: int(meta[f"{name}_crc32"]) for name in ("samples", "images")}
        if not isinstance(units, list) or not isinstance(rec_crcs, list) or len(units) != len(rec_crcs):
            raise ValueError("units / unit_record_crc32 are not two lists of one length")
    except (ValueError, KeyError, TypeError) as e:  # garbled or truncated: finalize rewrites it whole
        raise NotFinalizedError(f"{fin}: unreadable index metadata ({type(e).__name__}: {e}); "
                                "re-run finalize (teacher-dump with the same command)") from None
    tables = {}
    for name in ("samples", "images"):
        p = idx / f"{name}.arrow"
        try:
            with pa.memory_map(str(p)) as mm:
                buf = mm.read_buffer()
        except (FileNotFoundError, OSError) as e:
            raise NotFinalizedError(f"{p}: index file missing or unreadable ({e}); re-run finalize") from None
        if crc32(memoryview(buf)) != want[name]:
            raise NotFinalizedError(f"{root}: index/{name}.arrow fails its CRC (corrupted or rewritten); re-run finalize")
        try:
            tables[name] = pa.ipc.open_file(buf).read_all()
        except (pa.ArrowException, ValueError) as e:  # passes its CRC yet does not parse: written wrong
            raise NotFinalizedError(f"{p}: not a readable Arrow file ({e}); re-run finalize") from None
    if check_units:
        now = committed_units(root)
        if now != meta["units"]:
            added = sorted(set(now) - set(meta["units"]))
            gone = sorted(set(meta["units"]) - set(now))
            raise NotFinalizedError(
                f"{root}: index is stale (units committed since finalize: {_few(added)}; "
                f"units gone: {_few(gone)}); re-run finalize"
            )
    return Index(meta, tables["samples"], tables["images"])


def bsearch(col: pa.Array, key: str) -> int | None:
    """Position of `key` in a sorted string column, or None."""
    lo, hi = 0, len(col)
    while lo < hi:
        mid = (lo + hi) // 2
        if col[mid].as_py() < key:
            lo = mid + 1
        else:
            hi = mid
    return lo if lo < len(col) and col[lo].as_py() == key else None


def index_size_bytes(root: Path) -> int:
    idx = Path(root) / "index"
    return sum(os.path.getsize(p) for p in idx.iterdir() if p.is_file()) if idx.is_dir() else 0
