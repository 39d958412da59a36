"""Per-rank entry point under the DeepSpeed launcher, and how the CLI builds that launch.

    deepspeed --num_gpus N --master_port P --module student_train.launch --workflow W --subset short \
        --stage pretrain --mode cached --out runs/toy/student --init runs/toy/world/student_init

runs one stage on every rank (`StudentTrainRecipe`). Kept light at import time (no torch): the
`alignkd` CLI imports `RunArgs` from here.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from student_train.shm import unlink_all

STAGES = ("pretrain", "finetune")
MODES = ("cached", "online", "sft")
_REQUIRED = ("workflow", "subset", "stage", "init", "out")


@dataclass
class RunArgs:
    """One stage of one run, as every rank sees it."""

    workflow: str
    subset: str
    stage: str
    init: str  # the checkpoint the stage starts from (MobileVLM layout)
    out: str  # run directory; this stage writes <out>/<stage>/...
    mode: str | None = None  # None: train.mode
    preset: str | None = None  # None: train.loss.preset
    resume: bool = False
    max_steps: int | None = None  # None: train.<stage>.max_steps (or epochs)
    lr: float | None = None  # None: train.<stage>.lr
    projector_lr: float | None = None  # None: train.<stage>.projector_lr
    seed: int | None = None  # None: train.seed
    export_dtype: str | None = None  # None: train.export_dtype

    def to_argv(self) -> list[str]:
        argv = []
        for f in fields(self):
            v = getattr(self, f.name)
            flag = "--" + f.name.replace("_", "-")
            if isinstance(v, bool):
                argv += [flag] if v else []
            elif v is not None:
                argv += [flag, str(v)]
        return argv

    @classmethod
    def parse(cls, argv: list[str] | None = None) -> "RunArgs":
        p = argparse.ArgumentParser(prog="student_train.launch", description=__doc__)
        p.add_argument("--local_rank", "--local-rank", type=int, default=None)  # set by the launcher; we read env
        for f in fields(cls):
            flag = "--" + f.name.replace("_", "-")
            if f.type == "bool":
                p.add_argument(flag, action="store_true")
            else:  # annotations are strings here (postponed evaluation)
                kind = int if f.type.startswith("int") else float if f.type.startswith("float") else str
                p.add_argument(flag, type=kind, default=None, required=f.name in _REQUIRED)
        ns = vars(p.parse_args(argv))
        ns.pop("local_rank")
        args = cls(**{k: v for k, v in ns.items() if k in {f.name for f in fields(cls)}})
        args.resume = bool(args.resume)
        if args.stage not in STAGES:
            p.error(f"--stage {args.stage!r}: use one of {STAGES}")
        if args.mode is not None and args.mode not in MODES:
            p.error(f"--mode {args.mode!r}: use one of {MODES}")
        return args


def free_port() -> int:
    """A free TCP port for the rendezvous (several runs share this machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_command(args: RunArgs, num_procs: int, num_nodes: int = 1, hostfile: str | None = None,
                     master_port: int | None = None, extra: str = "") -> list[str]:
    """The `deepspeed` launcher command for one stage.

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
    cmd += ["--module", "student_train.launch", *args.to_argv()]
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
    args = RunArgs.parse(argv)
    from student_train.recipe import StudentTrainRecipe  # torch, deepspeed

    recipe = StudentTrainRecipe(args)
    try:
        recipe.setup()
        recipe.train()
    finally:
        recipe.cleanup()


if __name__ == "__main__":
    main()
