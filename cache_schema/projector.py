"""The teacher projector's weights, kept once per store (`<store>/projector/<tensor name>`), so a
student whose frozen tower equals the teacher's recomputes the teacher's projector tokens instead
of reading ~1.08 MB of them per image at the 7B's width (docs/results/cache_size.md).

Each tensor is one float32 zarr array (its own shape, one chunk, the store's vision codec + crc32c);
the root's `alignkd_cache.projector` lists {name: {"shape": [...], "crc32": CRC-32 of its C-order
bytes}}, so a read is checked like every other slice of the store. Written into the skeleton
before the store is renamed into place (create.py): a store never exists without its projector.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from cache_schema.codecs import codec_chain
from cache_schema.errors import CacheFormatError, IntegrityError
from cache_schema.records import crc32, read_root_meta

DIR = "projector"
FIRST_LAYER = "first_layer"  # the teacher's embedding rows, layer-0 norm and q/k projections (attention recompute)


def write_projector(root: Path, tensors: dict[str, np.ndarray], codec: str, group_name: str = DIR) -> dict:
    """Write `tensors` (name → float32 array) under root/<group_name>/ → the spec for the root meta."""
    if not tensors:
        raise CacheFormatError(f"the teacher's {group_name} has no tensors")
    group = zarr.open_group(str(root / group_name), mode="w-", zarr_format=3, attributes={})
    spec = {}
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype=np.float32)
        if not np.isfinite(a).all():
            raise CacheFormatError(f"teacher projector tensor {name!r} holds NaN/inf")
        arr = group.create_array(name=name, shape=a.shape, dtype=np.float32, chunks=a.shape or None,
                                 compressors=codec_chain(codec, 4), fill_value=0)
        arr[...] = a
        spec[name] = {"shape": list(a.shape), "crc32": crc32(a)}
    return spec


def read_projector(root: Path, group_name: str = DIR) -> dict[str, np.ndarray]:
    """The teacher projector (or first layer) of the store at `root` (name → float32 array), every
    tensor checked against the CRC-32 the root lists."""
    _, meta = read_root_meta(Path(root))
    spec = meta.get(group_name)
    if group_name == FIRST_LAYER and isinstance(spec, dict):
        spec = spec["tensors"]
    if not isinstance(spec, dict):
        raise CacheFormatError(f"{root}: the store holds no teacher {group_name} (dumped with stored targets)")
    out = {}
    for name, s in spec.items():
        try:
            a = zarr.open_array(str(Path(root) / group_name / name), mode="r", zarr_format=3)[...]
        except (ValueError, OSError, RuntimeError, KeyError) as e:
            raise IntegrityError(f"{root}: teacher {group_name} tensor {name!r} unreadable ({e}); "
                                 "run `alignkd cache verify`") from e
        a = np.asarray(a, dtype=np.float32)
        if list(a.shape) != s["shape"] or crc32(a) != s["crc32"]:
            raise IntegrityError(f"{root}: teacher {group_name} tensor {name!r} fails its checksum "
                                 "(corrupted); re-dump the store")
        out[name] = a
    return out


def read_first_layer(root: Path) -> tuple[dict[str, np.ndarray], dict]:
    """(the teacher's first-layer tensors, its config.json) kept by an attention-recompute store."""
    tensors = read_projector(root, FIRST_LAYER)
    return tensors, read_root_meta(Path(root))[1][FIRST_LAYER]["config"]
