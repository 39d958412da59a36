"""`alignkd student-train`: phase 2, the student trained on DeepSpeed ZeRO-2 from the teacher cache.

The command resolves the run once, in this process (`student_train.run`: the workflow with the
command line's overrides, the plan of `student_train.plan`: configs and tokenizers without
weights, samples, batch plan, DeepSpeed config; the store checked once: provenance, teacher
weights, token ids, the student tower; what the output directory holds), writes each stage's
`<out>/<stage>/student_run.json` and starts one `deepspeed` launcher for the command's stages
(`student_train.launch --run <file> [--run <file>]` on every rank, which reads them and resolves
nothing). `--stage all` runs pre-training, then fine-tuning from pre-training's exported student,
in the same rank processes. `--set train.pretrain.max_steps=150` overrides any workflow key for
this command (checked as the loader checks the file). `--dry-run` prints the plan instead; before
the teacher dump it notes the missing cache rather than refusing.

    alignkd student-train --workflow workflows/toy.yaml --subset short --stage all
    alignkd student-train --workflow workflows/mobilevlm_v2.yaml --stage all --num-gpus 8 --dry-run
    alignkd student-train --mode sft --init runs/toy/world/teacher_init --out runs/toy/teacher_run \
        --set train.pretrain.max_steps=150 --set train.finetune.max_steps=500          # the toy teacher
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import NoReturn

import typer

from student_train.launch import MODES, STAGES, launcher_command, launcher_env, release_shm_buffers

DEBUG_ENV = "ALIGNKD_DEBUG"  # =1: a refusal re-raises, with its traceback
REFUSED = 1  # exit code of a refusal, as teacher-dump and data build
USAGE = 2  # a command-line value out of range, as click's own usage errors


class UsageRefusal(ValueError):
    """A command-line value out of range (one line, like every refusal)."""


def _one_line(exc: BaseException) -> str:
    """The refusal as one line: a problem list ("...:\n  - a\n  - b\nDo x", items indented or
    dashed) becomes "...: a; b. Do x"."""
    out, prev_item = "", False
    for raw in str(exc).splitlines():
        ln = raw.strip()
        if not ln:
            continue
        item = ln.startswith("- ") or raw[:1].isspace()
        body = ln[2:] if ln.startswith("- ") else ln
        if out:
            out += "; " if item and prev_item else ". " if prev_item and not out.endswith((".", ")")) else " "
        out += body
        prev_item = item
    return out


def _refuse(exc: BaseException) -> NoReturn:
    """One line on stderr and exit 1 (2 for a bad command-line value) for a cause outside the
    program (bad input, missing or unreadable files, a full disk, a busy or damaged run);
    ALIGNKD_DEBUG=1 shows the traceback instead."""
    if os.environ.get(DEBUG_ENV) == "1":
        raise exc
    known = type(exc).__module__.split(".")[0] in ("student_train", "pipeline", "cache_schema")
    typer.echo(f"student-train: {'' if known else type(exc).__name__ + ': '}{_one_line(exc)}", err=True)
    raise typer.Exit(code=USAGE if isinstance(exc, UsageRefusal) else REFUSED)


def _num_procs(cli: int, configured: int) -> int:
    if cli < 0:
        raise UsageRefusal(f"--num-procs {cli}: give a positive number of ranks per node, or 0 for train.num_procs / every GPU")
    if cli > 0:
        return cli
    if configured < 0:
        raise UsageRefusal(f"train.num_procs = {configured}: give a positive number of ranks per node, or 0 for every GPU")
    if configured > 0:
        return configured
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def _check_counts(max_steps: int | None, num_nodes: int) -> None:
    if max_steps is not None and max_steps < 1:
        raise UsageRefusal(f"--max-steps {max_steps}: give at least 1 optimiser step, or leave it out for "
                           "train.<stage>.max_steps / epochs")
    if num_nodes < 1:
        raise UsageRefusal(f"--num-nodes {num_nodes}: give at least 1")


def parse_sets(items: list[str]) -> dict[str, object]:
    """`--set KEY=VALUE` items as workflow overrides: VALUE read as YAML (`150` an int, `true` a
    bool, `[a, b]` a list), and a YAML string that is a number in Python's spelling (`7e-4`, which
    YAML 1.1 leaves a string) as a float; `pipeline.workflow.with_overrides` checks keys and types."""
    import yaml

    out: dict[str, object] = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise UsageRefusal(f"--set {item!r}: give KEY=VALUE, e.g. --set train.finetune.max_steps=400")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UsageRefusal(f"--set {item!r}: the value is not YAML ({exc})") from exc
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        out[key.strip()] = value
    return out


def launch(cmd: list[str], env: dict[str, str], lock) -> int:
    """Run the stages' launcher to its end. It inherits the output directory's lock, so that a
    second run stays refused while it trains, even if this process is killed."""
    return subprocess.call(cmd, env=env, pass_fds=(lock.fileno(),))


def _refusals() -> tuple[type[BaseException], ...]:
    """What a user can cause and fix: bad or missing input, a full disk, a busy or damaged run."""
    from cache_schema.errors import CacheError
    from student_train.data import MissingSampleError
    from student_train.outlock import OutDirBusyError

    return (ValueError, OSError, CacheError, MissingSampleError, OutDirBusyError)


def student_train(
    workflow: str = typer.Option("workflows/toy.yaml", help="workflow YAML"),
    subset: str = typer.Option("short", help="data subset: short | long (data.subsets)"),
    stage: str = typer.Option("all", help="pretrain | finetune | all (pre-training, then fine-tuning from its export)"),
    mode: str = typer.Option(None, help="cached (targets from the store) | online (teacher in-process) | sft (no teacher); default train.mode"),
    preset: str = typer.Option(None, help="loss preset (sft, rkl, attn, focus, all, alignkd, vv, tt, full, last); default train.loss.preset"),
    init: str = typer.Option(None, help="checkpoint to start from (default models.student; fine-tuning: the pre-training export)"),
    out: str = typer.Option(None, help="run directory (default train.out_dir); stage S writes <out>/S/, <out> gets the last export"),
    resume: bool = typer.Option(False, help="continue from the latest checkpoint of each stage (finished stages are skipped)"),
    max_steps: int = typer.Option(None, help="optimiser steps per stage (overrides train.<stage>.max_steps / epochs)"),
    lr: float = typer.Option(None, help="LLM learning rate of every stage run (overrides train.<stage>.lr)"),
    projector_lr: float = typer.Option(None, help="projector learning rate of every stage run (overrides train.<stage>.projector_lr)"),
    seed: int = typer.Option(None, help="default train.seed"),
    num_gpus: int = typer.Option(0, "--num-gpus", "--num-procs", help="ranks per node (0: train.num_procs, else every GPU, or 1 on CPU)"),
    num_nodes: int = typer.Option(1, help="nodes (with --hostfile)"),
    hostfile: str = typer.Option(None, help="DeepSpeed hostfile for multi-node runs"),
    export_dtype: str = typer.Option(None, help="fp32 | fp16 | bf16 | auto (= train.precision); default train.export_dtype"),
    launcher_args: str = typer.Option("", help="extra arguments for the deepspeed launcher, e.g. '--master_addr 10.0.0.1'"),
    sets: list[str] = typer.Option([], "--set", help="KEY=VALUE: override a workflow key for this command (repeatable), "
                                   "e.g. --set train.pretrain.max_steps=150"),
    dry_run: bool = typer.Option(False, "--dry-run", help="check and print the plan and launcher commands, run nothing"),
) -> None:
    """Phase 2: train the student with DeepSpeed ZeRO-2 from the cached targets.

    Every refusal is one line on stderr, exit code 1 (2: a bad option value); ALIGNKD_DEBUG=1
    shows its traceback."""
    if stage not in (*STAGES, "all"):
        raise typer.BadParameter(f"--stage {stage!r}: use pretrain, finetune or all")
    if mode is not None and mode not in MODES:
        raise typer.BadParameter(f"--mode {mode!r}: use one of {MODES}")
    try:
        _check_counts(max_steps, num_nodes)
        rc = _train(workflow, subset, list(STAGES) if stage == "all" else [stage], mode, preset, init, out, resume,
                    max_steps, lr, projector_lr, seed, num_gpus, num_nodes, hostfile, export_dtype, launcher_args, dry_run,
                    parse_sets(sets))
    except _refusals() as exc:
        _refuse(exc)
    if rc:
        raise typer.Exit(code=rc)


def _train(workflow: str, subset: str, stages: list[str], mode: str | None, preset: str | None, init: str | None,
           out: str | None, resume: bool, max_steps: int | None, lr: float | None, projector_lr: float | None,
           seed: int | None, num_gpus: int, num_nodes: int, hostfile: str | None, export_dtype: str | None,
           launcher_args: str, dry_run: bool, sets: dict[str, object]) -> int:
    """Resolve the run once (student_train.run), then launch its stages (one launcher, the stages
    one after the other on every rank) under the output directory's lock; the launcher's exit
    code."""
    from pipeline.workflow import load_workflow, with_overrides
    from student_train.checkpoint import stage_state
    from student_train.run import PENDING, complete, resolve_runs  # pyarrow: not at CLI start

    wf = load_workflow(workflow)
    if sets:
        wf = with_overrides(wf, sets)
    nprocs = _num_procs(num_gpus, wf.train.num_procs)
    run, stage_runs = resolve_runs(wf, subset, stages, out=out, mode=mode, preset=preset, init=init, resume=resume,
                                   max_steps=max_steps, lr=lr, projector_lr=projector_lr, seed=seed,
                                   export_dtype=export_dtype, world_size=nprocs * num_nodes, dry_run=dry_run)
    out_dir = Path(stage_runs[0].out)
    # a resumed command skips the stages already exported; the rest share one launch
    todo = [(sp, sr) for sp, sr in zip(run.stages, stage_runs) if not (resume and stage_state(out_dir / sp.stage) == "done")]
    cmd = launcher_command([sr.path for _, sr in todo], nprocs, num_nodes, hostfile, extra=launcher_args)
    for sp in run.stages:
        sp.command = cmd
    if dry_run:
        typer.echo(run.describe())
        return 0
    for note in run.notes:  # what was not checked, or is skipped: a real run says so too
        typer.echo(f"[student-train] note: {note}", err=True)
    from student_train.outlock import OutDirLock
    from student_train.shm import reclaim_orphan_buffers

    with OutDirLock(out_dir) as lock:  # held until the launcher exits (the kernel drops it if we are killed)
        orphans = reclaim_orphan_buffers()
        if orphans:
            typer.echo(f"[student-train] removed {len(orphans)} orphaned /dev/shm buffer(s) of killed runs: "
                       + ", ".join(orphans), err=True)
        for sp in run.stages:
            if all(sp is not t for t, _ in todo):
                typer.echo(f"[student-train] {sp.stage}: already exported to {out_dir / sp.stage / 'final'}; skipping", err=True)
        if not todo:
            return 0
        for i, (sp, sr) in enumerate(todo):
            # what the ranks read: the first stage completed here (an earlier command's export: its
            # tower compared now); a later one pending until the stage before has exported its init
            # (rank 0 completes it then)
            pending = i > 0 and sr.store is not None and sr.store.vision_source == PENDING
            (sr if pending else complete(sr)).write()
            typer.echo(f"[student-train] {sp.stage}: {nprocs} rank(s)/node, init {sp.init.path}, out {out_dir / sp.stage}", err=True)
        try:
            rc = launch(cmd, launcher_env(nprocs), lock)
        finally:
            release_shm_buffers(cmd)
        if rc != 0:
            failed = next((sp.stage for sp, _ in todo if stage_state(out_dir / sp.stage) != "done"), todo[-1][0].stage)
            typer.echo(f"[student-train] {failed} failed (exit {rc}); the error is in the rank output above", err=True)
            return rc
    return 0
