"""The arguments `alignkd student-train` hands every rank survive the trip through argv."""

from student_train.launch import RunArgs


def test_run_args_round_trip_through_argv_keeps_types():
    a = RunArgs(workflow="w.yaml", subset="long", stage="pretrain", init="ckpt", out="o", mode="sft",
                resume=True, max_steps=7, lr=5e-4, projector_lr=2.5e-3, seed=3)
    b = RunArgs.parse(a.to_argv())
    assert b == a
    assert isinstance(b.lr, float) and isinstance(b.max_steps, int)


def test_unset_overrides_stay_unset():
    b = RunArgs.parse(RunArgs(workflow="w", subset="short", stage="finetune", init="i", out="o").to_argv())
    assert b.lr is None and b.projector_lr is None and b.max_steps is None and b.resume is False


def test_release_shm_buffers_removes_only_this_launchs_buffers(tmp_path):
    """DeepSpeed's CPU shm allreduce leaves one buffer per rank in /dev/shm; the launching process
    removes those of its own master port (and no one else's)."""
    import os

    from student_train.launch import RunArgs, launcher_command, release_shm_buffers

    cmd = launcher_command(RunArgs(workflow="w.yaml", subset="short", stage="finetune", init="i", out="o"), 2, master_port=29611)
    uid = os.getuid()
    mine = [f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_29611_{r}" for r in (0, 1)]
    others = [f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_29612_0",  # another launch, still running
              f"deepspeed_allreduce_buffer_{uid + 1}_127.0.0.1_29611_0",  # another user
              "unrelated_29611_0"]
    for name in mine + others:
        (tmp_path / name).write_bytes(b"x")
    assert sorted(release_shm_buffers(cmd, shm_dir=tmp_path)) == mine
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others)
    assert release_shm_buffers(cmd, shm_dir=tmp_path) == []  # idempotent
    assert release_shm_buffers(["deepspeed", "--module", "x"], shm_dir=tmp_path) == []  # no port: nothing
