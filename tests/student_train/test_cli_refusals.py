"""What `alignkd student-train` refuses in the launching process, before any rank starts, and how:
one line on stderr, exit code 1 (2 for a bad option value) (issue 15). Real stores, real files, real processes; nothing here
launches DeepSpeed (a refusal that came too late would launch it and fail the test on its exit code
or on the run directory it leaves)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline.workflow import with_overrides

REPO = Path(__file__).resolve().parents[2]
SUBSET, STAGE = "short", "finetune"
VICTIM = "toy_qa/ft-00002"


def write_workflow(wf, path: Path, **train) -> Path:
    """The Workflow as YAML (what the CLI reads), batches that fit the tiny world, train.* overrides."""
    d = dataclasses.asdict(wf)
    d.pop("source")
    d["train"]["deepspeed_config"] = str(REPO / "workflows" / "zero2.json")
    for st in ("pretrain", "finetune"):
        d["train"][st].update(micro_batch=2, global_batch=4)
    d["train"].update(train)
    path.write_text(yaml.safe_dump(d))
    return path


def _holder(out: Path) -> subprocess.Popen:
    """Another live process holding `out`'s lock, as a running student-train does."""
    p = subprocess.Popen([sys.executable, "-c", "import time; from student_train.outlock import OutDirLock\n"
                          f"OutDirLock({str(out)!r}).acquire(); print('ready', flush=True); time.sleep(120)"],
                         stdout=subprocess.PIPE, text=True, cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert p.stdout.readline().strip() == "ready"
    return p


def _cli(args: list[str], env: dict | None = None):
    import typer

    from student_train.cli import student_train

    app = typer.Typer()
    app.command()(student_train)
    return CliRunner().invoke(app, args, env=env)


def _refused(res, *needles: str, code: int = 1) -> str:
    """The refusal: exit `code`, exactly one line, naming every needle, no traceback."""
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == code, (res.exit_code, res.output, res.exception)
    assert len(lines) == 1 and lines[0].startswith("student-train: "), res.output
    assert "Traceback" not in res.output and all(n in lines[0] for n in needles), (needles, lines[0])
    return lines[0]


def _run(wf_path: Path, out: Path, *more: str):
    return _cli(["--workflow", str(wf_path), "--subset", SUBSET, "--stage", STAGE, "--num-procs", "1",
                 "--max-steps", "1", "--out", str(out), *more])


@pytest.fixture(scope="module")
def other_teacher(tiny_world, tmp_path_factory) -> Path:
    """The test teacher's exact config.json with other weights (one lm_head row changed)."""
    from pipeline.models import MobileVLM

    src = Path(tiny_world.base.models.teacher)
    dst = tmp_path_factory.mktemp("other_teacher") / "teacher"
    m = MobileVLM.from_pretrained(src)
    with torch.no_grad():
        m.lm_head.weight[0].add_(0.5)
    m.save_pretrained(dst)
    shutil.copy(src / "config.json", dst / "config.json")
    return dst


# ------------------------------------------------------------------ the store's provenance
def test_a_store_dumped_by_other_teacher_weights_is_refused_before_launch(tiny_world, tiny_store, other_teacher,
                                                                          tmp_path):
    from pipeline.fingerprint import checkpoint_fingerprint, config_fingerprint

    wf = tiny_world.workflow()
    assert config_fingerprint(other_teacher) == config_fingerprint(wf.models.teacher)  # same config: passed before
    wf = with_overrides(wf, {"models.teacher": str(other_teacher)})
    out = tmp_path / "run"
    res = _run(write_workflow(wf, tmp_path / "wf.yaml"), out)
    from cache_schema import CacheReader

    dumped = CacheReader(tiny_store).provenance.teacher_fingerprint
    _refused(res, "teacher_fingerprint", checkpoint_fingerprint(other_teacher), dumped, str(tiny_store))
    assert not out.exists()  # refused before the lock, the launch and any rank


def test_a_store_dumped_from_another_manifest_is_refused_unless_skip(tiny_world, tiny_store, tmp_path):
    wf = tiny_world.workflow()
    t = pq.read_table(wf.data.manifest)  # the same data less one pre-training sample: another manifest
    drop = next(r["sample_id"] for r in t.to_pylist() if r["stage"] == "pretrain" and r[f"in_{SUBSET}"])
    pq.write_table(t.filter(pc.not_equal(t["sample_id"], drop)), tmp_path / "manifest.parquet")
    wf = with_overrides(wf, {"data.manifest": str(tmp_path / "manifest.parquet")})
    res = _run(write_workflow(wf, tmp_path / "wf.yaml"), tmp_path / "run", "--dry-run")
    _refused(res, "manifest_fingerprint", str(tmp_path / "manifest.parquet"), "missing_sample: skip")
    res = _run(write_workflow(wf, tmp_path / "wf.yaml", missing_sample="skip"), tmp_path / "run", "--dry-run")
    assert res.exit_code == 0 and "manifest_fingerprint differs" in res.output, res.output


def test_samples_missing_from_the_store_are_refused_before_launch(tiny_world, tmp_path):
    wf = tiny_world.workflow()
    wf = with_overrides(wf, {"cache.dir": str(tmp_path / "cache")})
    tiny_world.write_store(wf, drop=(VICTIM,))  # the dump's manifest, one sample failed
    out = tmp_path / "run"
    _refused(_run(write_workflow(wf, tmp_path / "wf.yaml"), out), "1 of", VICTIM, "missing_sample: skip")
    assert not out.exists()


# --------------------------------------------------------------- one line, or a traceback
def test_a_refusal_is_one_line_and_alignkd_debug_shows_the_traceback(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    _refused(_cli(["--workflow", str(missing)]), "workflow file not found", str(missing))
    res = _cli(["--workflow", str(missing)], env={"ALIGNKD_DEBUG": "1"})
    assert res.exit_code != 0 and type(res.exception).__name__ == "WorkflowError"


def test_a_multi_problem_refusal_is_one_line(tiny_world, tiny_store, tmp_path):
    wf = tiny_world.workflow()
    wf = with_overrides(wf, {"cache.logits_topk": 7, "cache.focus_k": 3})  # the store holds 64 / 16
    line = _refused(_run(write_workflow(wf, tmp_path / "wf.yaml"), tmp_path / "run", "--dry-run"),
                    "2 problem(s)", "logits_topk", "focus_k")
    assert "; " in line


@pytest.mark.parametrize("flag, value, needle", [("--max-steps", "-3", "--max-steps -3"),
                                                  ("--max-steps", "0", "--max-steps 0"),
                                                  ("--num-procs", "-2", "--num-procs -2"),
                                                  ("--num-nodes", "0", "--num-nodes 0")])
def test_negative_counts_are_refused(tmp_path, flag, value, needle):
    _refused(_cli(["--workflow", "workflows/toy.yaml", "--out", str(tmp_path / "o"), flag, value, "--dry-run"]),
             needle, code=2)


# ------------------------------------------------------------------------- the run directory
def test_resume_refuses_a_damaged_metrics_file_before_launch(tiny_world, tiny_store, tmp_path):
    stage = tmp_path / "run" / STAGE
    (stage / "checkpoints").mkdir(parents=True)
    (stage / "checkpoints" / "latest").write_text("step2")
    (stage / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    res = _run(write_workflow(tiny_world.workflow(), tmp_path / "wf.yaml"), tmp_path / "run", "--resume", "--dry-run")
    _refused(res, f"{stage / 'metrics.jsonl'} line 2")


def test_a_second_run_on_a_busy_out_dir_is_refused_naming_the_holder(tiny_world, tiny_store, tmp_path):
    out = tmp_path / "run"
    holder = _holder(out)
    try:
        res = _run(write_workflow(tiny_world.workflow(), tmp_path / "wf.yaml"), out)
        _refused(res, str(out), f"pid {holder.pid}")
        assert not (out / STAGE).exists()  # nothing launched
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_exclusive_and_dies_with_its_holder(tmp_path):
    from student_train.outlock import OutDirBusyError, OutDirLock

    with OutDirLock(tmp_path / "o"):
        with pytest.raises(OutDirBusyError, match=f"pid {os.getpid()}"):
            OutDirLock(tmp_path / "o").acquire()  # another open of the file: flock refuses it too
    holder = _holder(tmp_path / "o")
    with pytest.raises(OutDirBusyError):
        OutDirLock(tmp_path / "o").acquire()
    holder.kill()  # SIGKILL: no clean-up runs, the kernel drops the lock
    holder.wait()
    OutDirLock(tmp_path / "o").acquire().release()


def test_a_launch_reclaims_the_buffers_killed_runs_left(tiny_world, tiny_store, tmp_path):
    """student-train removes orphaned /dev/shm buffers before it launches (and says so); the
    launcher then fails at once on a bad argument, so no rank trains."""
    from student_train.shm import PREFIX, SHM_DIR

    if not SHM_DIR.is_dir():
        pytest.skip("no /dev/shm")
    buf = SHM_DIR / f"{PREFIX}{os.getuid()}_pytest-{os.getpid()}_killed_0"
    buf.write_bytes(b"\0" * 4096)
    os.utime(buf, (0, 0))  # from a run killed long ago; no process maps it
    try:
        res = _run(write_workflow(tiny_world.workflow(), tmp_path / "wf.yaml"), tmp_path / "run",
                   "--launcher-args", "--no-such-launcher-flag")
        assert not buf.exists() and "orphaned /dev/shm buffer(s) of killed runs: " in res.output, res.output
        assert buf.name in res.output and res.exit_code != 0
    finally:
        buf.unlink(missing_ok=True)


def test_the_launcher_keeps_the_lock_when_student_train_is_killed(tmp_path):
    """SIGKILL of the launching process leaves its launcher (and ranks) training: the directory
    stays locked until they are gone too."""
    from student_train.outlock import OutDirBusyError, OutDirLock

    out, pidfile = tmp_path / "o", tmp_path / "launcher.pid"
    (tmp_path / "launcher.py").write_text(  # stands in for `deepspeed`: trains on after its parent died
        f"import os, time\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)\n")
    (tmp_path / "cli_stub.py").write_text(  # the CLI's last steps: lock, then launch
        "import os, sys\nfrom student_train.cli import launch\nfrom student_train.outlock import OutDirLock\n"
        f"lock = OutDirLock({str(out)!r}).acquire()\n"
        f"launch([sys.executable, {str(tmp_path / 'launcher.py')!r}], dict(os.environ), lock)\n")
    parent = subprocess.Popen([sys.executable, str(tmp_path / "cli_stub.py")], cwd=REPO,
                              env=dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")))
    deadline = time.time() + 60
    while not (pidfile.is_file() and pidfile.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    launcher = int(pidfile.read_text())
    parent.kill()
    parent.wait()
    try:
        with pytest.raises(OutDirBusyError):
            OutDirLock(out).acquire()
    finally:
        os.kill(launcher, 9)
    deadline = time.time() + 10
    while time.time() < deadline:  # the launcher is reaped by init; then the lock is free
        try:
            OutDirLock(out).acquire().release()
            break
        except OutDirBusyError:
            time.sleep(0.1)
    else:
        pytest.fail("the lock outlived its holders")


def test_problem_lists_become_one_line():
    from cache_schema.errors import ProvenanceMismatch
    from student_train.cli import _one_line

    assert _one_line(ValueError("w: 2 problem(s):\n  - a: 1\n  - b: 2\nRe-run it.")) == "w: 2 problem(s): a: 1; b: 2. Re-run it."
    line = _one_line(ProvenanceMismatch("cache c", {"logits_topk": (32, 64), "focus_k": (8, 16)}))
    assert "\n" not in line and "logits_topk: expected 32, got 64; focus_k: expected 8, got 16. Use a new" in line


def test_an_unwritable_out_dir_is_one_line_naming_the_path(tiny_world, tiny_store, tmp_path):
    (tmp_path / "a_file").write_text("not a directory")
    out = tmp_path / "a_file" / "run"  # mkdir fails as on a read-only or full file system: an OSError
    _refused(_run(write_workflow(tiny_world.workflow(), tmp_path / "wf.yaml"), out), "NotADirectoryError",
             str(out))
