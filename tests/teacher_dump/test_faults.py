"""Faults: an actor killed mid-run, and the whole dump SIGKILLed part-way then re-run, both end in
a store equal, sample by sample and array by array, to the uninterrupted reference run."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from cache_schema import CacheStore, verify_store
from pipeline.workflow import load_workflow
from teacher_dump.run import dump
from teacher_dump.validate import check_inputs
from tests.teacher_dump.dumplib import ALIGNKD, REPO, assert_stores_equal, workflow

pytestmark = pytest.mark.slow


def test_an_actor_killed_mid_run_has_its_units_retried(dump_world, ray_local, reference, tmp_path):
    job = check_inputs(load_workflow(workflow(tmp_path, "actor_kill", dump_world.world,
                                              manifest=dump_world.root / "manifest.parquet")), "short")
    killed: list[int] = []

    def kill_first_actor(res: dict) -> None:
        # the actor that just committed a unit holds its next one (2 in flight per actor): kill it
        if not killed:
            os.kill(res["pid"], signal.SIGKILL)
            killed.append(res["pid"])

    logs: list[str] = []
    rep = dump(job, progress=False, log=logs.append, on_unit=kill_first_actor)
    assert killed and rep.retries >= 1, logs
    assert any("retrying" in m for m in logs), logs
    assert verify_store(job.store_path, expected_sample_ids=reference.plan.sample_ids()).ok
    assert_stores_equal(job.store_path, reference.store)


def _kill_session(sid: int) -> None:
    """SIGKILL every live process of session `sid` (the job we started: its driver, the raylet/GCS in
    its process group, and the Ray workers, which sit in process groups of their own), by pid."""
    while True:
        left = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            try:
                state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
                if os.getsid(pid) == sid and state != "Z":
                    left.append(pid)
                    os.kill(pid, signal.SIGKILL)
            except (OSError, IndexError):
                continue  # gone meanwhile
        if not left:
            return
        time.sleep(0.1)


def test_sigkill_of_the_whole_dump_then_rerun_equals_an_uninterrupted_run(dump_world, reference, tmp_path):
    # one actor: the kill lands after its first unit, well before its sixth
    wf = workflow(tmp_path, "kill", dump_world.world, manifest=dump_world.root / "manifest.parquet", dump={"workers": 1})
    cmd = [str(ALIGNKD), "teacher-dump", "--workflow", str(wf), "--subset", "short", "--no-progress"]
    store = load_workflow(wf).cache_path("short")
    n_units = len(reference.plan.units)
    log = (tmp_path / "first.log").open("w")
    # its own session: the kill reaches the driver and the local Ray it started (raylet, workers)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not (store / "units").is_dir() or not any((store / "units").glob("*/commit.json")):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no unit committed within 10 min"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        _kill_session(proc.pid)  # orphaned Ray workers could otherwise still commit a unit or two
        proc.wait()
    done = CacheStore.open(store).committed_units()
    assert 1 <= len(done) < n_units, f"kill landed after {len(done)} of {n_units} units"

    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{len(done)} of {n_units} units already complete" in again.stderr
    rep = verify_store(store, expected_sample_ids=reference.plan.sample_ids())
    assert rep.ok, (rep.faults, rep.incomplete_units)
    assert_stores_equal(store, reference.store)
