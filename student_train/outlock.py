"""One `student-train` per output directory: an exclusive flock on `<out>/.student-train.lock`.

Two runs on one `--out` (started together, or `--resume` on a live run) would both train, both
export and interleave metrics.jsonl. The launching process takes the lock before the first stage
and holds it until it exits, and so does the `deepspeed` launcher it starts (it inherits the
descriptor): a killed `student-train` whose launcher trains on still holds the directory. The
kernel drops the lock when the last holder dies (also on SIGKILL), so a crashed run never leaves a
stale lock behind. The holder writes its pid into the file so that the
refusal can name it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = ".student-train.lock"


class OutDirBusyError(RuntimeError):
    """Another live process holds the output directory's lock."""


class OutDirLock:
    """Exclusive, non-blocking lock of one training output directory (a context manager)."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "OutDirLock":
        self.out.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutDirBusyError(f"{self.out} is in use by another student-train (pid {holder}): wait for it to "
                                  "finish or stop it, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def fileno(self) -> int:
        """The locked descriptor: a child given it (subprocess `pass_fds`) holds the lock with us."""
        if self._fd is None:
            raise ValueError(f"{self.path} is not locked")
        return self._fd

    def release(self) -> None:
        if self._fd is not None:  # the file stays: unlinking it would let a third run lock a new inode
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "OutDirLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
