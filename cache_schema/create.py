"""Creating a store atomically: the whole skeleton (root zarr.json, units/, staging/, index/) is
built in a sibling directory named for its owner (`.<name>.creating-<host>-<pid>-<nonce>`), fsync'ed,
then renamed into place. A kill or a full disk during creation therefore leaves no half store at
the path: only a sibling that the next creator removes once its owner is dead.

States of a store path (`store_state`):
    absent    nothing there                    -> create
    empty     an empty directory               -> create (the rename replaces it)
    skeleton  an unfinished store made by an older version (no root zarr.json, no data)
              -> recreate
    store     a root zarr.json                 -> open (provenance checked by the caller)
    foreign   anything else                    -> refuse
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import zarr

from cache_schema.errors import CacheError, CacheFormatError
from cache_schema.owner import is_abandoned, owner_token
from cache_schema.projector import FIRST_LAYER, write_projector
from cache_schema.provenance import Provenance
from cache_schema.records import fsync_path, fsync_tree, root_meta

SKELETON = ("units", "staging", "index")
_CREATING = ".creating-"


def _creating_prefix(path: Path) -> str:
    return f".{path.name}{_CREATING}"


def _is_skeleton(path: Path) -> bool:
    """An unfinished store of the old in-place creation: only units/ (empty or its zarr.json),
    staging/ and index/ (empty) and `.init-*` dirs. It holds no data, so recreating loses nothing."""
    for e in path.iterdir():
        if e.name.startswith(".init-") and e.is_dir():
            continue
        if e.name not in SKELETON or not e.is_dir():
            return False
        allowed = {"zarr.json"} if e.name == "units" else set()
        if any(c.name not in allowed for c in e.iterdir()):
            return False
    return True


def store_state(path: str | os.PathLike) -> str:
    """absent | empty | skeleton | store | foreign (see the module doc)."""
    path = Path(path)
    if (path / "zarr.json").is_file():
        return "store"
    if not path.exists():
        return "absent"
    if not path.is_dir():
        return "foreign"
    if not any(path.iterdir()):
        return "empty"
    return "skeleton" if _is_skeleton(path) else "foreign"


def sweep_abandoned_creations(path: Path) -> list[Path]:
    """Remove sibling creation dirs of `path` whose owner died (a kill during creation)."""
    removed = []
    prefix = _creating_prefix(path)
    if not path.parent.is_dir():
        return removed
    for e in path.parent.iterdir():
        if e.name.startswith(prefix) and e.is_dir() and is_abandoned(e.name[len(prefix):]):
            shutil.rmtree(e, ignore_errors=True)
            removed.append(e)
    return removed


def _build(tmp: Path, provenance: Provenance, projector: dict | None, first_layer: tuple | None) -> None:
    root = zarr.open_group(str(tmp), mode="w-", zarr_format=3, attributes={"alignkd_cache": root_meta(provenance)})
    # before the rename: a store never exists without the teacher weights it names
    spec = None if projector is None else write_projector(tmp, projector, provenance.encoding.vision_codec)
    first = None
    if first_layer is not None:
        tensors, config = first_layer
        first = {"tensors": write_projector(tmp, tensors, provenance.encoding.vision_codec, FIRST_LAYER), "config": config}
    if spec is not None or first is not None:
        root.update_attributes({"alignkd_cache": root_meta(provenance, spec, first)})
    zarr.open_group(str(tmp / "units"), mode="w", zarr_format=3, attributes={})
    for sub in ("staging", "index"):
        (tmp / sub).mkdir()
    fsync_tree(tmp)


def _created_meanwhile(path: Path) -> bool:
    if store_state(path) == "store":
        return False
    raise CacheFormatError(f"{path}: changed while the cache was being created; re-run, or pick another path")


def create_store(path: str | os.PathLike, provenance: Provenance, projector: dict | None = None,
                 first_layer: tuple[dict, dict] | None = None) -> bool:
    """Make the store at `path` atomically unless one is there already. projector: the teacher
    projector's tensors (name → float32 array) to keep in it (cache_schema.projector); required
    when provenance.projector_tokens is "recompute"; first_layer: (tensors, teacher config.json dict),
    required when provenance.attention is "recompute". Returns True if this call
    created it, False if a store existed (or a concurrent creator won the race). Raises
    CacheFormatError for a path holding something else, CacheError (one line) when the disk is
    full or not writable; nothing is left behind at `path` in either case."""
    path = Path(path)
    sweep_abandoned_creations(path)
    state = store_state(path)
    if state == "store":
        return False
    if provenance.projector_tokens == "recompute" and not projector:
        raise CacheFormatError(f"{path}: projector_tokens 'recompute' needs the teacher projector's weights "
                               "to create the store")
    if provenance.attention == "recompute" and not first_layer:
        raise CacheFormatError(f"{path}: attention 'recompute' needs the teacher's first-layer weights to create the store")
    if state == "foreign":
        raise CacheFormatError(f"{path}: exists, is not empty and is not an alignkd cache; "
                               "pick another cache path or move it aside")
    tmp = path.parent / f"{_creating_prefix(path)}{owner_token()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _build(tmp, provenance, projector, first_layer)
        # an older version's half-made store: no data in it. Checked again right before deleting, so
        # a concurrent creator's store renamed into place meanwhile is opened, not deleted (a
        # teacher-dump creates its store under the dump lock, so only library callers can race here)
        if state == "skeleton":
            if store_state(path) != "skeleton":
                return _created_meanwhile(path)
            shutil.rmtree(path)
        try:
            os.rename(tmp, path)  # replaces an absent or empty directory atomically
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST) and store_state(path) == "store":
                return False  # a concurrent creator won
            raise
        fsync_path(path.parent)
        return True
    except OSError as e:
        if store_state(path) == "store":
            return False
        why = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise CacheError(f"{path}: could not create the cache ({why}: {e.filename or path}); "
                         "nothing was left at the path: free space or fix permissions, then re-run") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
