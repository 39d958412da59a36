"""What a hostile test broke (issue 15), each reproduced with real processes and real files:
kills and a full disk during store creation, an edited zarr.json dtype, leftovers of killed
writers and finalizes, and a commit's clean-up racing a live writer of the same unit."""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cache_schema_testlib import make_prov, write_unit
from test_concurrency import UNITS, _all_ids, _slow_writer

from cache_schema import CacheError, CacheReader, CacheStore, IntegrityError, verify_store
from cache_schema.create import store_state


def _create_many(root: str, ready) -> None:
    """Create stores c0, c1, ... one after another until killed (ready once c0 exists)."""
    prov = make_prov()
    for i in range(10_000):
        CacheStore.create_or_open(Path(root) / f"c{i}", prov)
        ready.set()


def test_kill_during_creation_leaves_no_half_store_and_rerun_creates_it(tmp_path):
    ctx = mp.get_context("spawn")
    for k, delay in enumerate((0.01, 0.07, 0.23)):
        root = tmp_path / f"r{k}"
        root.mkdir()
        ready = ctx.Event()
        p = ctx.Process(target=_create_many, args=(str(root), ready))
        p.start()
        assert ready.wait(timeout=120)
        time.sleep(delay)
        os.kill(p.pid, signal.SIGKILL)
        p.join(timeout=30)
        paths = sorted(d for d in root.iterdir() if not d.name.startswith("."))
        # every path is a whole store or absent: never a half-made one no re-run accepts
        assert {store_state(d) for d in paths} == {"store"}, {d.name: store_state(d) for d in paths}
        nxt = root / f"c{len(paths)}"  # the one being created when the kill came (if any)
        CacheStore.create_or_open(nxt, make_prov())
        assert store_state(nxt) == "store"
        assert [d.name for d in root.iterdir() if d.name.startswith(".")] == []  # dead creator's dir swept


def test_old_versions_unfinished_skeleton_is_recreated(tmp_path):
    # what the in-place creation of earlier versions left after a kill: the skeleton, no root zarr.json
    path = tmp_path / "c"
    for sub in ("units", "staging", "index", ".init-0123456789ab/units"):
        (path / sub).mkdir(parents=True)
    assert store_state(path) == "skeleton"
    s = CacheStore.create_or_open(path, make_prov())
    write_unit(s, "u0", *UNITS["u0"])
    assert s.finalize(UNITS["u0"][0]).n_samples == 3


def _fill(fs: Path) -> Path:
    filler = fs / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
    return filler


def test_full_disk_during_creation_is_one_line_and_leaves_nothing(tiny_fs):
    path = tiny_fs / "c"
    filler = _fill(tiny_fs)
    with pytest.raises(CacheError) as err:
        CacheStore.create_or_open(path, make_prov())
    msg = str(err.value)
    assert "\n" not in msg and "disk is full" in msg and str(path) in msg, msg
    assert not path.exists() and sorted(p.name for p in tiny_fs.iterdir()) == ["filler"]
    filler.unlink()  # space freed: the re-run creates it
    CacheStore.create_or_open(path, make_prov())
    assert store_state(path) == "store"


def test_edited_dtype_in_zarr_json_is_refused_by_the_reader(tmp_path):
    s = CacheStore.create_or_open(tmp_path / "c", make_prov())
    write_unit(s, "u0", *UNITS["u0"])
    s.finalize(UNITS["u0"][0])
    meta = tmp_path / "c" / "units" / "u0" / "image_tokens" / "zarr.json"
    d = json.loads(meta.read_text())
    assert d["data_type"] == "float32"
    d["data_type"] = "int32"  # same bytes, other numbers: every CRC still passes
    meta.write_text(json.dumps(d))
    r = CacheReader(tmp_path / "c")
    with pytest.raises(IntegrityError) as err:
        r.image_tokens("u0-img0")
    msg = str(err.value)
    for needle in ("'u0-img0'", "array image_tokens", "unit u0", "dtype int32", "dtype float32"):
        assert needle in msg, msg


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _kill_slow_writer(path: str) -> Path:
    """SIGKILL a writer half-way through unit u2: returns the staging dir it leaves."""
    ctx = mp.get_context("spawn")
    started = ctx.Event()
    p = ctx.Process(target=_slow_writer, args=(path, started))
    p.start()
    assert started.wait(timeout=120)
    os.kill(p.pid, signal.SIGKILL)
    p.join(timeout=30)
    (left,) = (Path(path) / "staging").iterdir()
    return left


def test_stale_staging_of_a_committed_unit_is_reported_then_cleaned(tmp_path):
    path = tmp_path / "c"
    store = CacheStore.create_or_open(path, make_prov())
    for u in ("u0", "u1", "u3"):
        write_unit(store, u, *UNITS[u])
    left = _kill_slow_writer(str(path))
    keep = tmp_path / "keep"
    shutil.copytree(left, keep)
    write_unit(store, "u2", *UNITS["u2"])  # the re-run commits u2 and removes the dead writer's dir
    assert not left.exists()
    # the state a kill between the commit's rename and its clean-up leaves: the dead dir is back
    shutil.copytree(keep, left)
    (path / "index").mkdir(exist_ok=True)
    tmp = path / "index" / f".samples.arrow.{_dead_pid()}.tmp"  # a failed finalize's temp file
    tmp.write_bytes(b"partial")
    store.finalize(_all_ids())
    assert not tmp.exists()  # finalize removes a dead finalize's temp file
    tmp.write_bytes(b"partial")
    rep = verify_store(path)
    assert rep.incomplete_units == [] and len(rep.leftovers) == 2, rep.leftovers
    assert "committed unit u2" in rep.leftovers[0] + rep.leftovers[1]
    from typer.testing import CliRunner

    from alignkd.cache_cmd import app

    out = CliRunner().invoke(app, ["verify", str(path)]).output
    assert out.count("LEFTOVER: ") == 2 and "OK, with 2 leftover(s)" in out, out  # not a silent OK
    gone = store.remove_leftovers()  # what the next teacher-dump does first
    assert sorted(gone) == sorted([left, tmp])
    assert verify_store(path).leftovers == [] and verify_store(path).ok


def test_commit_never_deletes_a_live_concurrent_writers_staging_dir(tmp_path):
    ctx = mp.get_context("spawn")
    path = tmp_path / "c"
    store = CacheStore.create_or_open(path, make_prov())
    started = ctx.Event()
    p = ctx.Process(target=_slow_writer, args=(str(path), started))  # writes half of u2, stays alive
    p.start()
    try:
        assert started.wait(timeout=120)
        (live,) = (path / "staging").iterdir()
        write_unit(store, "u2", *UNITS["u2"])  # a duplicate writer of u2 commits meanwhile
        assert live.is_dir() and any(live.iterdir()), "the commit deleted a live writer's files"
        assert store.remove_leftovers() == [] and live.is_dir()
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.join(timeout=30)
    assert store.remove_leftovers() == [live]  # its writer is dead now
