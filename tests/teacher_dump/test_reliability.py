"""Store creation and concurrent dumps (issue 15 item 2): an unfinished store left by a kill is
resumed, not refused; a second dump of one store refuses in one line while the first holds it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cache_schema.create import store_state
from pipeline.workflow import load_workflow
from teacher_dump.lock import DumpLockedError, lock_path
from teacher_dump.run import dump, open_store
from teacher_dump.validate import check_inputs
from tests.teacher_dump.dumplib import ALIGNKD, REPO, workflow


def _skeleton(path) -> None:
    """What a kill during the old in-place store creation left: the skeleton, no root zarr.json."""
    for sub in ("units", "staging", "index", ".init-0123456789ab/units"):
        (path / sub).mkdir(parents=True)


def test_unfinished_store_from_a_killed_creation_is_resumed_not_refused(dump_world, tmp_path):
    wf = workflow(tmp_path, "skel", dump_world.world, manifest=dump_world.root / "manifest.parquet")
    job = check_inputs(load_workflow(wf), "short")
    _skeleton(job.store_path)
    job = check_inputs(load_workflow(wf), "short")  # was: "exists, is not empty and is not an alignkd cache"
    assert not job.resume
    open_store(job)
    assert store_state(job.store_path) == "store" and check_inputs(load_workflow(wf), "short").resume


def test_a_path_holding_other_files_is_still_refused(dump_world, tmp_path):
    from teacher_dump.validate import DumpInputError

    wf = workflow(tmp_path, "other", dump_world.world, manifest=dump_world.root / "manifest.parquet")
    store = check_inputs(load_workflow(wf), "short").store_path
    store.mkdir(parents=True)
    (store / "notes.txt").write_text("mine")
    with pytest.raises(DumpInputError, match="is not an alignkd cache"):
        check_inputs(load_workflow(wf), "short")


HOLD = """
import sys, time
from teacher_dump.lock import dump_lock
with dump_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_second_dump_of_one_store_refuses_in_one_line(dump_world, tmp_path):
    wf = workflow(tmp_path, "lock", dump_world.world, manifest=dump_world.root / "manifest.parquet")
    job = check_inputs(load_workflow(wf), "short")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(job.store_path)], stdout=subprocess.PIPE, text=True,
                              env=env, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DumpLockedError) as err:
            dump(job, progress=False)
        msg = str(err.value)
        assert "\n" not in msg and str(job.store_path) in msg and f"pid {holder.pid}" in msg, msg
        assert not job.store_path.exists()  # refused before writing anything
        cli = subprocess.run([str(ALIGNKD), "teacher-dump", "--workflow", str(wf), "--subset", "short",
                              "--no-progress"], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
        assert cli.returncode == 1 and cli.stderr.strip().count("\n") == 0, cli.stderr
        assert "being written by another teacher-dump" in cli.stderr and "Traceback" not in cli.stderr
    finally:
        holder.kill()
        holder.wait()
    assert lock_path(job.store_path).is_file()  # the lock file stays; the kernel released the lock


KILLED_CREATOR = """
import os, signal, sys
from pathlib import Path
import cache_schema.create as create
from cache_schema.provenance import Provenance

from teacher_dump.run import teacher_first_layer, teacher_projector

def die(tmp, *args):  # build the skeleton aside as create_store does, then die before the rename
    real_build(tmp, *args)
    os.kill(os.getpid(), signal.SIGKILL)

real_build, create._build = create._build, die
prov = Provenance.from_dict(__import__("json").loads(sys.argv[2]))
first = teacher_first_layer(Path(sys.argv[3])) if prov.attention == "recompute" else None
create.create_store(Path(sys.argv[1]), prov, teacher_projector(Path(sys.argv[3])), first)
"""


@pytest.mark.slow
def test_dump_killed_during_store_creation_reruns_to_the_reference_store(dump_world, ray_local, reference, tmp_path):
    """Acceptance (issue 15): a kill during store creation, then the same dump again, finishes a store
    identical to an uninterrupted run. The killed creator is a real process SIGKILLed between
    building the skeleton aside and renaming it into place."""
    import json

    from cache_schema import verify_store
    from tests.teacher_dump.dumplib import assert_stores_equal

    wf = workflow(tmp_path, "killcreate", dump_world.world, manifest=dump_world.root / "manifest.parquet")
    job = check_inputs(load_workflow(wf), "short")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", KILLED_CREATOR, str(job.store_path),
                        json.dumps(job.provenance.stamped().to_dict()), str(job.teacher_dir)], env=env, cwd=REPO,
                       timeout=120)
    assert r.returncode == -9
    (left,) = [p for p in job.store_path.parent.iterdir() if ".creating-" in p.name]
    assert not job.store_path.exists()
    job = check_inputs(load_workflow(wf), "short")
    logs: list[str] = []
    dump(job, progress=False, log=logs.append)
    assert not left.exists(), "the dead creator's skeleton was not swept"
    assert verify_store(job.store_path, expected_sample_ids=reference.plan.sample_ids()).ok
    assert_stores_equal(job.store_path, reference.store)
