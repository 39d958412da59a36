"""`alignkd student-train`: phase 2, the student trained on DeepSpeed ZeRO-2 from the teacher cache.

The command checks the run in this process (workflow, batch plan, DeepSpeed config, the cache's
provenance, what the output directory holds), then re-executes one `deepspeed` launcher per
stage (`student_train.launch` on every rank). `--stage all` runs pre-training, then fine-tuning
from pre-training's exported student.

    alignkd student-train --workflow workflows/toy.yaml --subset short --stage all
    alignkd student-train --mode sft --init runs/toy/world/teacher_init --out runs/toy/teacher   # toy teacher
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import typer

from student_train.launch import MODES, STAGES, RunArgs, launcher_command, launcher_env


def _num_procs(cli: int, configured: int) -> int:
    if cli > 0:
        return cli
    if configured > 0:
        return configured
    import torch  # noqa: PLC0415

    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def _stage_init(stage: str, stages: list[str], init: str | None, out: Path, default: str) -> str:
    """Where a stage starts: fine-tuning after pre-training in the same command starts from its
    export; alone, from --init, else from an earlier pre-training export in --out, else the
    workflow's student."""
    pre = out / "pretrain" / "final"
    if stage == "finetune" and "pretrain" in stages:
        return str(pre)
    if init:
        return init
    if stage == "finetune" and (pre / "config.json").is_file():
        return str(pre)
    return default


def _preflight(wf, subset: str, stage: str, mode: str, init: str, num_procs: int, resume: bool, out: Path) -> dict:
    """Everything that can be refused before ranks start; returns the filled DeepSpeed config."""
    from student_train.checkpoint import stage_state  # noqa: PLC0415
    from student_train.engine import batch_plan, fill_ds_config  # noqa: PLC0415
    from student_train.losses import resolve_loss  # noqa: PLC0415

    resolve_loss(wf.train.loss)
    plan = batch_plan(getattr(wf.train, stage), num_procs, f"train.{stage}")
    ds = fill_ds_config(wf.train.deepspeed_config, plan, wf.train.precision)
    state = stage_state(out / stage)
    if state != "empty" and not resume:
        raise typer.BadParameter(f"{out / stage} already holds a {state} run: pass --resume to continue it, "
                                 "or remove it / choose another --out")
    if mode == "cached":
        from cache_schema.reader import CacheReader  # noqa: PLC0415
        from student_train.data import check_store  # noqa: PLC0415
        from student_train.preflight import check_token_hashes  # noqa: PLC0415

        path = wf.cache_path(subset)
        if not path.exists():
            raise typer.BadParameter(f"cache {path} not found: run `alignkd teacher-dump --workflow {wf.source} "
                                     f"--subset {subset}` first, or use --mode online / sft")
        wf.models.student = init if Path(init, "config.json").is_file() else wf.models.student
        check_store(wf, subset, CacheReader(path))
        check_token_hashes(wf, subset, stage, path)
    return ds


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
    seed: int = typer.Option(None, help="default train.seed"),
    num_gpus: int = typer.Option(0, "--num-gpus", "--num-procs", help="ranks per node (0: train.num_procs, else every GPU, or 1 on CPU)"),
    num_nodes: int = typer.Option(1, help="nodes (with --hostfile)"),
    hostfile: str = typer.Option(None, help="DeepSpeed hostfile for multi-node runs"),
    export_dtype: str = typer.Option(None, help="fp32 | fp16 | bf16 | auto (= train.precision); default train.export_dtype"),
    launcher_args: str = typer.Option("", help="extra arguments for the deepspeed launcher, e.g. '--master_addr 10.0.0.1'"),
    dry_run: bool = typer.Option(False, "--dry-run", help="check and print the plan and launcher commands, run nothing"),
) -> None:
    """Phase 2: train the student with DeepSpeed ZeRO-2 from the cached targets."""
    from pipeline.workflow import load_workflow  # noqa: PLC0415

    wf = load_workflow(workflow)
    if stage not in (*STAGES, "all"):
        raise typer.BadParameter(f"--stage {stage!r}: use pretrain, finetune or all")
    if mode is not None and mode not in MODES:
        raise typer.BadParameter(f"--mode {mode!r}: use one of {MODES}")
    mode = mode or wf.train.mode
    if preset is not None:
        wf.train.loss.preset = preset
    elif mode == "sft":
        wf.train.loss.preset = "sft"
    out_dir = Path(out or wf.train.out_dir)
    stages = list(STAGES) if stage == "all" else [stage]
    nprocs = _num_procs(num_gpus, wf.train.num_procs)
    runs = []  # check every stage before the first one starts
    for st in stages:
        st_init = _stage_init(st, stages, init, out_dir, wf.models.student)
        ds = _preflight(wf, subset, st, mode, st_init, nprocs, resume, out_dir)
        args = RunArgs(workflow=workflow, subset=subset, stage=st, init=st_init, out=str(out_dir), mode=mode,
                       preset=preset, resume=resume, max_steps=max_steps, seed=seed, export_dtype=export_dtype)
        runs.append((st, st_init, ds, launcher_command(args, nprocs, num_nodes, hostfile, extra=launcher_args)))
    from student_train.checkpoint import stage_state  # noqa: PLC0415

    for st, st_init, ds, cmd in runs:
        if dry_run:
            typer.echo(json.dumps({"stage": st, "init": st_init, "ranks_per_node": nprocs, "deepspeed_config": ds}, indent=2))
            typer.echo(shlex.join(cmd))
            continue
        if resume and stage_state(out_dir / st) == "done":
            typer.echo(f"[student-train] {st}: already exported to {out_dir / st / 'final'}; skipping", err=True)
            continue
        typer.echo(f"[student-train] {st}: {nprocs} rank(s)/node, init {st_init}, out {out_dir / st}", err=True)
        rc = subprocess.call(cmd, env=launcher_env(nprocs))
        if rc != 0:
            typer.echo(f"[student-train] {st} failed (exit {rc}); the error is in the rank output above", err=True)
            raise typer.Exit(code=rc)
