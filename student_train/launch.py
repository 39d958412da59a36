"""Per-rank entry point under the DeepSpeed launcher, and how the CLI builds that launch.

    deepspeed --num_gpus N --master_port P --module student_train.launch \
        --run runs/toy/student/pretrain/student_run.json --run runs/toy/student/finetune/student_run.json

runs the command's stages one after the other on every rank (`StudentTrainRecipe`), each from the
run the CLI resolved and wrote (`student_train.run.StudentRun`): the ranks read it, they do not
resolve it again. One launch for all stages: a second launch cost ~10 s of launcher and rank
start-up (imports, DeepSpeed's checks) per run on 2 CPU cores. A stage that starts from the export
of the stage before it has its tower compared with the store (`student_train.run.complete`) once,
by rank 0, after that export is written. Kept light at import time (no torch): the `alignkd` CLI
imports it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
from pathlib import Path

from student_train.shm import unlink_all

STAGES = ("pretrain", "finetune")
MODES = ("cached", "online", "sft")


def parse_args(argv: list[str] | None = None) -> list[Path]:
    """The run files a rank is handed (`--run`, one per stage, in order); the launcher's
    --local_rank is ignored (env)."""
    p = argparse.ArgumentParser(prog="student_train.launch", description=__doc__)
    p.add_argument("--local_rank", "--local-rank", type=int, default=None)  # set by the launcher; we read env
    p.add_argument("--run", required=True, action="append",
                   help="the student_run.json `alignkd student-train` wrote for a stage (repeated: stages in order)")
    return [Path(r) for r in p.parse_args(argv).run]


def free_port() -> int:
    """A free TCP port for the rendezvous (several runs share this machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_command(run_files: list[Path], num_procs: int, num_nodes: int = 1, hostfile: str | None = None,
                     master_port: int | None = None, extra: str = "") -> list[str]:
    """The `deepspeed` launcher command for the stages whose resolved runs are `run_files` (in order).

    --num_gpus N starts N local ranks; on a machine without GPUs DeepSpeed's CPU accelerator takes
    the same path (gloo, one process per "device"), so the command is the same everywhere. A
    hostfile (multi-node) is passed through; without one, only localhost is used.
    """
    exe = Path(sys.executable).with_name("deepspeed")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "deepspeed.launcher.runner"]
    if hostfile:
        cmd += ["--hostfile", hostfile, "--num_nodes", str(num_nodes)]
    cmd += ["--num_gpus", str(num_procs), "--master_port", str(master_port or free_port())]
    cmd += shlex.split(extra)
    cmd += ["--module", "student_train.launch"]
    for f in run_files:
        cmd += ["--run", str(f)]
    return cmd


SHM_DIR = Path("/dev/shm")


def release_shm_buffers(command: list[str], shm_dir: Path = SHM_DIR) -> list[str]:
    """Delete the shared-memory allreduce buffers the ranks of `command` (a `launcher_command`)
    left behind; returns the names removed.

    On CPU, DeepSpeed's shm allreduce (ops/csrc/cpu/comm/shm.cpp) creates one ~66 MB
    `deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>` per rank and never unlinks it: on this
    project's machine 159 runs had filled 21 GB of /dev/shm and the next runs crawled in swap. The
    launch's master port is in the name, so the launching process removes exactly its own, after the
    launcher exits (also after a failure)."""
    try:
        port = command[command.index("--master_port") + 1]
    except (ValueError, IndexError):
        return []
    return unlink_all(shm_dir.glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"))


def launcher_env(num_procs: int) -> dict[str, str]:
    """Environment of the launch: the repository on PYTHONPATH (ranks import our packages), and one
    OpenMP thread per rank unless OMP_NUM_THREADS is set (torchrun's default too): on a shared CPU
    machine OpenMP spin-waiting under oversubscription made a toy step 8x slower (measured)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def main(argv: list[str] | None = None) -> None:
    run_files = parse_args(argv)
    import gc

    from student_train.recipe import StudentTrainRecipe  # torch, deepspeed
    from student_train.run import StudentRun

    for i, path in enumerate(run_files):
        last = i == len(run_files) - 1
        # the first stage's run was completed by the CLI; a later one starts from the export the
        # stage before wrote, and rank 0 completes it now (the process group is still up)
        recipe = StudentTrainRecipe(StudentRun.read(path) if i == 0 else complete_on_rank0(path))
        ok = False
        try:
            recipe.setup()
            recipe.train()
            ok = True
        finally:
            recipe.cleanup(keep_process_group=ok and not last)  # the next stage reuses the rendezvous
        del recipe
        gc.collect()  # the stage's engine, model and loader workers, before the next stage builds its own


def complete_on_rank0(path: Path):
    """The stage's run file completed by rank 0 (`student_train.run.complete`: the tower of the
    earlier stage's export compared with the store) and read by every rank; a refusal on rank 0
    is raised on every rank (a rank left waiting would hang the launch)."""
    import torch.distributed as dist

    from student_train.run import StudentRun, complete

    problem: list[str | None] = [None]
    if dist.get_rank() == 0:
        try:
            complete(StudentRun.read(path, pending_ok=True)).write()
        except Exception as exc:  # noqa: BLE001 - every rank must learn of it, whatever it is
            problem = [f"{type(exc).__name__}: {exc}"]
    dist.broadcast_object_list(problem, src=0)
    if problem[0] is not None:
        raise RuntimeError(f"{path}: the stage could not start: {problem[0]}")
    return StudentRun.read(path)


if __name__ == "__main__":
    main()
