"""Reclaim DeepSpeed's shared-memory allreduce buffers that killed runs left in /dev/shm.

On CPU every rank creates a ~66 MB `deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>` and
never unlinks it. `launch.release_shm_buffers` removes a launch's own buffers after its launcher
exits, but a SIGKILLed `student-train` never gets there: 7 kills left 8 buffers (0.5 GB). So each
launch first removes the orphans: buffers of this user that no live process maps (every rank maps
its own buffer and its peers' for the whole run) and that are old enough that their creator is not
between creating and mapping them. Anything still mapped — another live run of this user, on any
port — is left alone.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

SHM_DIR = Path("/dev/shm")
PREFIX = "deepspeed_allreduce_buffer_"
MIN_AGE_S = 60.0  # a rank maps its buffer right after creating it; a minute is ample


def mapped_paths(proc: Path = Path("/proc")) -> set[str] | None:
    """Paths of the files mapped by any live process this user can see; None if /proc is absent
    (then nothing is known to be unmapped, and nothing may be removed)."""
    if not proc.is_dir():
        return None
    paths: set[str] = set()
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            text = (d / "maps").read_text(errors="replace")
        except OSError:  # exited meanwhile, or another user's process (which cannot map our 0600 buffers)
            continue
        for line in text.splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/"):
                paths.add(parts[5].removesuffix(" (deleted)"))
    return paths


def reclaim_orphan_buffers(shm_dir: Path = SHM_DIR, min_age_s: float = MIN_AGE_S) -> list[str]:
    """Delete this user's allreduce buffers in `shm_dir` that no live process maps and that were
    last modified more than `min_age_s` ago; returns the names removed."""
    candidates = []
    now = time.time()
    uid = os.getuid()
    for f in shm_dir.glob(f"{PREFIX}*"):
        try:
            st = f.stat()
        except FileNotFoundError:
            continue
        if st.st_uid == uid and now - st.st_mtime > min_age_s:
            candidates.append(f)
    if not candidates:
        return []
    mapped = mapped_paths()  # after the stat: a buffer mapped since is seen as mapped
    if mapped is None:
        return []
    return unlink_all(f for f in candidates if str(f) not in mapped and str(f.resolve()) not in mapped)


def unlink_all(files) -> list[str]:
    """Remove these files (one already gone is fine: another clean-up got there first); returns
    the names removed."""
    removed = []
    for f in files:
        try:
            f.unlink()
            removed.append(f.name)
        except FileNotFoundError:
            pass
    return removed
