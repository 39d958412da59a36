"""Metadata-only views of a store for `alignkd cache info/ls`: they read zarr.json, commit
records and the index, never a payload chunk (sizes come from the file system)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from cache_schema.index import FINALIZED, index_size_bytes, load_index
from cache_schema.records import committed_units, incomplete_units, load_record, read_root
from cache_schema.schema import unit_arrays


def _dir_bytes(p: Path) -> tuple[int, int]:
    """(bytes, files) under p."""
    n = f = 0
    for d, _, files in os.walk(p):
        for name in files:
            n += os.path.getsize(os.path.join(d, name))
            f += 1
    return n, f


def store_info(path: str | os.PathLike) -> dict:
    """Provenance, counts, per-array stored vs decoded bytes, compression ratios."""
    root = Path(path)
    prov = read_root(root)
    units = committed_units(root)
    specs = unit_arrays(prov)
    arrays = {a.name: {"dtype": a.dtype.str, "codec": a.codec, "elements": 0, "decoded_bytes": 0,
                       "stored_bytes": 0, "files": 0} for a in specs}
    n_samples = n_images = 0
    for u in units:
        rec = load_record(root / "units" / u, prov)
        n_samples += rec["n_samples"]
        n_images += rec["n_images"]
        for a in specs:
            row = arrays[a.name]
            row["elements"] += rec["lengths"][a.name]
            row["decoded_bytes"] += rec["lengths"][a.name] * a.dtype.itemsize
            b, f = _dir_bytes(root / "units" / u / a.name)
            row["stored_bytes"] += b
            row["files"] += f
    for row in arrays.values():
        row["compression_ratio"] = row["decoded_bytes"] / row["stored_bytes"] if row["stored_bytes"] else None
    stored = sum(r["stored_bytes"] for r in arrays.values())
    decoded = sum(r["decoded_bytes"] for r in arrays.values())
    finalized = (root / "index" / FINALIZED).is_file()
    return {
        "path": str(root),
        "provenance": prov.to_dict(),
        "finalized": finalized,
        "units": len(units),
        "incomplete_units": incomplete_units(root),
        "samples": n_samples,
        "images": n_images,
        "arrays": arrays,
        "stored_bytes": stored,
        "decoded_bytes": decoded,
        "index_bytes": index_size_bytes(root),
        "compression_ratio": decoded / stored if stored else None,
        "bytes_per_sample": stored / n_samples if n_samples else None,
    }


def list_samples(path: str | os.PathLike, dataset: str | None = None, unit: str | None = None,
                 limit: int | None = None) -> list[dict]:
    """Rows (sample_id, dataset, unit, row, image_hash, n_text, n_resp, token_hash) from the index,
    or from the commit records when the store is not finalised yet. dataset = sample_id prefix."""
    root = Path(path)
    prov = read_root(root)
    rows: list[dict] = []
    if (root / "index" / FINALIZED).is_file():
        idx = load_index(root, check_units=False)
        t: pa.Table = idx.samples
        names = idx.meta["units"]
        for r in t.to_pylist():
            r["unit"] = names[r["unit"]]
            rows.append(r)
    else:
        for u in committed_units(root):
            s = load_record(root / "units" / u, prov)["samples"]
            for i, sid in enumerate(s["sample_id"]):
                rows.append({"sample_id": sid, "unit": u, "row": i, "token_hash": s["token_hash"][i],
                             "image_hash": s["image_hash"][i], "n_text": s["n_text"][i], "n_resp": s["n_resp"][i]})
        rows.sort(key=lambda r: r["sample_id"])
    out = []
    for r in rows:
        r["dataset"] = r["sample_id"].split("/", 1)[0] if "/" in r["sample_id"] else ""
        if (dataset is None or r["dataset"] == dataset) and (unit is None or r["unit"] == unit):
            out.append(r)
            if limit is not None and len(out) >= limit:
                break
    return out
