"""What `alignkd student-train` hands every rank: one resolved run file, read back equal."""

import dataclasses
import json
from pathlib import Path

import pytest

from pipeline.workflow import load_workflow, with_overrides
from student_train.launch import launcher_command, parse_args
from student_train.run import PENDING, RunFileError, StoreCheck, StudentRun

REPO = Path(__file__).resolve().parents[2]


def _run(tmp_path, **kw) -> StudentRun:
    wf = with_overrides(load_workflow(REPO / "workflows/toy.yaml"),
                        {"train.finetune.lr": 5e-4, "train.finetune.max_steps": 7, "train.loss.preset": "rkl",
                         "models.student": "ckpt"})
    store = StoreCheck(path="c/short.zarr", teacher_heads=8, teacher_hidden=256, vision_source="recompute",
                       token_ids_compared=12, missing=1)
    return StudentRun(**{**dict(wf=wf, subset="long", stage="finetune", init="ckpt", out=str(tmp_path / "o"),
                                resume=True, num_samples=11, store=store), **kw})


def test_a_resolved_run_round_trips_through_its_json_file(tmp_path):
    run = _run(tmp_path)
    path = run.write()
    assert path == tmp_path / "o" / "finetune" / "student_run.json" and not list(path.parent.glob(".*tmp"))
    back = StudentRun.read(path)
    assert back == run and back.wf.train.finetune.lr == 5e-4 and isinstance(back.wf.train.finetune.max_steps, int)
    assert back.store.vision_source == "recompute" and back.num_samples == 11
    no_store = _run(tmp_path, store=None, resume=False)
    assert StudentRun.from_json(no_store.to_json(), "x") == no_store


def test_the_launch_hands_the_ranks_the_run_files_in_stage_order(tmp_path):
    path = _run(tmp_path).path
    cmd = launcher_command([path], 2, master_port=29611)
    assert cmd[cmd.index("--module"):] == ["--module", "student_train.launch", "--run", str(path)]
    assert parse_args([*cmd[cmd.index("--run"):], "--local_rank=1"]) == [path]
    pre = _run(tmp_path, stage="pretrain").path
    cmd = launcher_command([pre, path], 2, master_port=29611)  # --stage all: one launch, both stages
    assert cmd[cmd.index("--module"):] == ["--module", "student_train.launch", "--run", str(pre), "--run", str(path)]
    assert parse_args(["--local_rank=0", *cmd[cmd.index("--run"):]]) == [pre, path]


def test_set_reads_values_as_yaml_and_refuses_what_is_not_key_value():
    from student_train.cli import UsageRefusal, parse_sets

    got = parse_sets(["train.pretrain.max_steps=150", "train.finetune.lr=7e-4", "train.finetune.lr=1.0e-3",
                      "train.gradient_checkpointing=true", "data.subsets={short: 64}", "name=toy 2"])
    assert got == {"train.pretrain.max_steps": 150, "train.finetune.lr": 1e-3, "train.gradient_checkpointing": True,
                   "data.subsets": {"short": 64}, "name": "toy 2"}
    assert parse_sets(["train.finetune.lr=7e-4"]) == {"train.finetune.lr": 7e-4}  # YAML 1.1 leaves it a string
    assert isinstance(got["train.pretrain.max_steps"], int)
    for bad in ("train.finetune.lr", "=3", "x=[1"):
        with pytest.raises(UsageRefusal, match="--set"):
            parse_sets([bad])


def test_a_rank_refuses_a_run_file_it_cannot_trust(tmp_path):
    run = _run(tmp_path)
    pending = dataclasses.replace(run, store=dataclasses.replace(run.store, vision_source=PENDING)).write()
    with pytest.raises(RunFileError, match="tower was never compared"):
        StudentRun.read(pending)
    d = json.loads(run.to_json())
    for bad, needle in (({**d, "version": 0}, "not a student run file of version 1"),
                        ({k: v for k, v in d.items() if k != "subset"}, "not a student run file")):
        pending.write_text(json.dumps(bad))
        with pytest.raises(RunFileError, match=needle) as err:
            StudentRun.read(pending)
        assert str(pending) in str(err.value)
    with pytest.raises(RunFileError, match="cannot read"):
        StudentRun.read(tmp_path / "absent.json")


def test_release_shm_buffers_removes_only_this_launchs_buffers(tmp_path):
    """DeepSpeed's CPU shm allreduce leaves one buffer per rank in /dev/shm; the launching process
    removes those of its own master port (and no one else's)."""
    import os

    from student_train.launch import release_shm_buffers

    cmd = launcher_command([Path("o/finetune/student_run.json")], 2, master_port=29611)
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
