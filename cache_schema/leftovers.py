"""Leftovers of killed writers: staging dirs (`staging/<unit_id>.<owner token>`) and finalize's
temp files (`index/.<name>.<pid>.tmp`). They are harmless to readers but waste disk and, for a
committed unit, look like work that never finished; `remove_leftovers` deletes the ones whose
owner is gone (never a live writer's), `find_leftovers` lists what is there for `cache verify`."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from cache_schema.owner import is_abandoned, pid_alive

_INDEX_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>[0-9]+)\.tmp$")


def _staging(root: Path) -> list[tuple[Path, str, str]]:
    """(dir, unit_id, owner token) of every staging dir."""
    st = Path(root) / "staging"
    if not st.is_dir():
        return []
    out = []
    for e in os.scandir(st):
        if e.is_dir() and "." in e.name and not e.name.startswith("."):
            unit, token = e.name.rsplit(".", 1)
            out.append((Path(e.path), unit, token))
    return out


def _index_tmp(root: Path) -> list[tuple[Path, int]]:
    idx = Path(root) / "index"
    if not idx.is_dir():
        return []
    return [(Path(e.path), int(m["pid"])) for e in os.scandir(idx) if (m := _INDEX_TMP_RE.match(e.name))]


def remove_leftovers(root: str | os.PathLike, unit_id: str | None = None, staging: bool = True,
                     index_tmp: bool = False) -> list[Path]:
    """Delete abandoned staging dirs (of `unit_id` only, if given) and, with index_tmp, finalize
    temp files whose writer is dead or is this process. Returns what was removed."""
    removed = []
    for d, unit, token in _staging(Path(root)) if staging else []:
        if (unit_id is None or unit == unit_id) and is_abandoned(token):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    if index_tmp:
        for p, pid in _index_tmp(Path(root)):
            if pid == os.getpid() or not pid_alive(pid):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def find_leftovers(root: str | os.PathLike, committed: set[str]) -> list[str]:
    """One line per leftover a reader never looks at: staging dirs of committed units and
    finalize temp files (staging dirs of incomplete units are reported as incomplete units)."""
    root = Path(root)
    lines = [f"staging dir {d.relative_to(root)} of committed unit {unit}"
             + ("" if is_abandoned(token) else " (its writer may still be running)")
             for d, unit, token in _staging(root) if unit in committed]
    lines += [f"temp file {p.relative_to(root)} of a failed finalize (pid {pid})" for p, pid in _index_tmp(root)]
    return sorted(lines)
