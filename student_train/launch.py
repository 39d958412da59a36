"""Per-rank entry point under the DeepSpeed launcher, and how the CLI builds that launch.

    deepspeed --num_gpus N --master_port P --module student_train.launch --run runs/toy/student/pretrain/student_run.json

runs one stage on every rank (`StudentTrainRecipe`) from the run the CLI resolved and wrote
(`student_train.run.StudentRun`): the ranks read it, they do not resolve it again. Kept light at
import time (no torch): the `alignkd` CLI imports it.
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


def parse_args(argv: list[str] | None = None) -> Path:
    """The run file a rank is handed (`--run`); the launcher's --local_rank is ignored (env)."""
    p = argparse.ArgumentParser(prog="student_train.launch", description=__doc__)
    p.add_argument("--local_rank", "--local-rank", type=int, default=None)  # set by the launcher; we read env
    p.add_argument("--run", required=True, help="the student_run.json `alignkd student-train` wrote for this stage")
    return Path(p.parse_args(argv).run)


def free_port() -> int:
    """A free TCP port for the rendezvous (several runs share this machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_command(run_file: Path, num_procs: int, num_nodes: int = 1, hostfile: str | None = None,
                     master_port: int | None = None, extra: str = "") -> list[str]:
    """The `deepspeed` launcher command for one stage, whose resolved run is `run_file`.

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
    cmd += ["--module", "student_train.launch", "--run", str(run_file)]
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
    run_file = parse_args(argv)
    from student_train.recipe import StudentTrainRecipe  # torch, deepspeed
    from student_train.run import StudentRun

    recipe = StudentTrainRecipe(StudentRun.read(run_file))
    try:
        recipe.setup()
        recipe.train()
    finally:
        recipe.cleanup()


if __name__ == "__main__":
    main()
