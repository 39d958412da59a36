"""A SIGKILLed training run leaks its ranks' /dev/shm allreduce buffers; the next launch removes
the orphans — and only them. Real files in /dev/shm, a real live process mapping one of them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from student_train.shm import PREFIX, SHM_DIR, reclaim_orphan_buffers

pytestmark = pytest.mark.skipif(not SHM_DIR.is_dir() or not Path("/proc/self/maps").is_file(),
                                reason="needs /dev/shm and /proc")


def test_reclaim_removes_only_old_unmapped_buffers():
    tag = f"{os.getuid()}_pytest-{os.getpid()}-{time.monotonic_ns()}"
    orphan, live, young = (SHM_DIR / f"{PREFIX}{tag}_{name}_0" for name in ("orphan", "live", "young"))
    old = time.time() - 3600
    for f in (orphan, live, young):
        f.write_bytes(b"\0" * 4096)
    os.utime(orphan, (old, old))
    os.utime(live, (old, old))  # old, but a live rank maps it (its run is still going)
    mapper = subprocess.Popen([sys.executable, "-c",
                               "import mmap, sys, time\n"
                               f"f = open({str(live)!r}, 'r+b'); m = mmap.mmap(f.fileno(), 4096)\n"
                               "print('ready', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert mapper.stdout.readline().strip() == "ready"
        removed = reclaim_orphan_buffers()
        assert orphan.name in removed and live.name not in removed and young.name not in removed
        assert not orphan.exists() and live.exists() and young.exists()
    finally:
        mapper.kill()
        mapper.wait()
        for f in (orphan, live, young):
            f.unlink(missing_ok=True)


def test_reclaim_keeps_a_mapped_buffer_once_its_mapper_is_gone_only_then_removes_it():
    tag = f"{os.getuid()}_pytest-{os.getpid()}-{time.monotonic_ns()}"
    buf = SHM_DIR / f"{PREFIX}{tag}_killed_0"
    buf.write_bytes(b"\0" * 4096)
    old = time.time() - 3600
    os.utime(buf, (old, old))
    rank = subprocess.Popen([sys.executable, "-c",
                             "import mmap, time\n"
                             f"f = open({str(buf)!r}, 'r+b'); m = mmap.mmap(f.fileno(), 4096)\n"
                             "print('ready', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert rank.stdout.readline().strip() == "ready"
        assert buf.name not in reclaim_orphan_buffers() and buf.exists()
        rank.kill()  # SIGKILL, as the runs: nothing unlinks the buffer
        rank.wait()
        assert buf.name in reclaim_orphan_buffers() and not buf.exists()
    finally:
        rank.kill()
        rank.wait()
        buf.unlink(missing_ok=True)
