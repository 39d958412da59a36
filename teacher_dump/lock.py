"""One dump per cache directory at a time: an exclusive `fcntl.flock` on a sibling lock file
(`.<store name>.lock`; beside the store, because the store itself appears only when complete).

The kernel drops the lock when its holder exits, however it dies, so a kill never leaves a stale
lock. A second dump of the same store refuses at once, naming the holder, instead of both
writing the same units (flock works across processes on one host and on most network
filesystems via fcntl emulation; NFS without lockd support gives no protection).
"""

from __future__ import annotations

import fcntl
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class DumpLockedError(RuntimeError):
    """Another teacher-dump holds the store's lock."""


def lock_path(store: Path) -> Path:
    return Path(store).parent / f".{Path(store).name}.lock"


@contextmanager
def dump_lock(store: str | os.PathLike) -> Iterator[Path]:
    """Hold the store's dump lock for the block; DumpLockedError (one line) if another holds it."""
    p = lock_path(Path(store))
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise DumpLockedError(
                f"{store} is being written by another teacher-dump ({holder}, lock {p}): "
                "wait for it to finish, or stop it and re-run to resume"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield p
    finally:
        os.close(fd)  # releases the lock
