"""`alignkd reproduce` — the paper's Tables 3 and 4 and Table 1's bottom block, at toy scale.

    alignkd reproduce --workflow workflows/toy.yaml          (make reproduce: 33 runs, see below)
    alignkd reproduce --quick                                (2 presets × 1 seed × 2 steps: a smoke test)
    alignkd reproduce --presets sft,all --seeds 0,1,2,3,4 --out runs/toy/five_seeds

Prerequisites as in `alignkd demo` (toy world → manifest → toy teacher), then the teacher cache
of every subset the runs read. Every (subset, preset) pair of `reproduce:` is trained once per
seed — `alignkd student-train --stage all` then `alignkd eval` — into
<out>/runs/<subset>/<preset>/seed_<S>/ (log.txt holds both commands' output), `reproduce.jobs`
runs at a time. A run with eval/summary.json is finished and skipped, so rerunning the same
command continues an interrupted reproduction (Ctrl-C or `kill` stops the running ones cleanly);
finished runs of another budget (train section, --max-steps, --eval-limit) are refused rather
than mixed in. Results (mean ± std over seeds) are rewritten after every finished run:
<out>/reproduce.md and <out>/reproduce.json.

Cost with the toy workflow's train section (CPU seconds per run, train + eval, measured): SFT ≈ 110,
Table 3's distilled runs ≈ 170, Table 4's ≈ 300–330 (their store holds every map, and a read
decodes all of them). The 33 default runs ≈ 6,700 CPU s ≈ 60 min at 2 jobs on 2 cores, plus the
toy teacher (≈ 11 min, shared with `alignkd demo`) and three teacher dumps (≈ 5 min).

Table 4's presets distil attention blocks the workflow's cache may not hold (vv, tt, full, the last
layer). Then the runs that need them read <out>/workflow.yaml instead: the same workflow with
those blocks added to cache.blocks/layers and its own cache.dir (<out>/cache).
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path

import typer

from alignkd.demo_cmd import StepRunner, prepare_teacher
from alignkd.reproduce_plan import QUICK, BudgetMismatch, Run, budget_of, check_finished, make_plan
from alignkd.reproduce_report import write_report
from alignkd.reproduce_runner import _fmt, _interrupt, run_all


# ---------------------------------------------------------------------------------- planning
def _csv(text: str | None, kind=str) -> list | None:
    return None if text is None else [kind(x) for x in text.split(",") if x.strip()]


# ------------------------------------------------------------------------------------ command
def reproduce(
    workflow: Path = typer.Option(Path("workflows/toy.yaml"), help="workflow YAML (toy world; its reproduce: section)"),
    seeds: str = typer.Option(None, help="comma-separated seeds (default reproduce.seeds: 0,1,2)"),
    presets: str = typer.Option(None, help="ablation presets on the Short subset (default reproduce.presets: "
                                           "sft,rkl,attn,focus,all,vv,tt,full,last)"),
    subsets: str = typer.Option(None, help="Table 1's subsets, each with reproduce.subset_presets (default short,long)"),
    out: Path = typer.Option(None, help="output directory (default reproduce.out, else <run_dir>/reproduce[_quick])"),
    max_steps: int = typer.Option(None, help="optimiser steps per stage of every run "
                                             "(default reproduce.max_steps; 0: the train section's)"),
    jobs: int = typer.Option(None, help="runs at once (default reproduce.jobs)"),
    eval_limit: int = typer.Option(None, help="evaluate on the first N held-out questions (0: all)"),
    quick: bool = typer.Option(False, help="smoke test: seed 0, presets sft and all, 2 steps a stage, 16 questions"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and the commands, run nothing"),
) -> None:
    """Reproduce the paper's Tables 3, 4 and Table 1's bottom block at toy scale (mean ± std over seeds)."""
    from pipeline.workflow import WorkflowError, load_workflow

    try:
        wf = load_workflow(workflow)
    except WorkflowError as exc:
        typer.secho(f"reproduce: {exc}", fg="red", err=True)
        raise typer.Exit(code=2) from None
    cfg, q = wf.reproduce, (QUICK if quick else {})
    try:
        seeds_ = _csv(seeds, int) or q.get("seeds") or cfg.seeds
    except ValueError:
        raise typer.BadParameter(f"--seeds {seeds!r}: use comma-separated integers, e.g. 0,1,2") from None
    presets_ = _csv(presets) or q.get("presets") or cfg.presets
    subsets_ = _csv(subsets) if subsets is not None else cfg.subsets
    max_steps = max_steps if max_steps is not None else q.get("max_steps", cfg.max_steps)
    eval_limit = eval_limit if eval_limit is not None else q.get("eval_limit", cfg.eval_limit)
    jobs = max(1, jobs or cfg.jobs)
    out = Path(out or cfg.out or Path(wf.run_dir) / ("reproduce_quick" if quick else "reproduce"))
    try:
        runs, derived = make_plan(workflow, wf, seeds_, presets_, subsets_, out)
    except (WorkflowError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    budget = budget_of(wf, max_steps, eval_limit)
    command = "alignkd " + shlex.join(["reproduce", "--workflow", str(workflow), "--seeds", ",".join(map(str, seeds_)),
                                       "--presets", ",".join(presets_), "--subsets", ",".join(subsets_), "--out", str(out),
                                       "--max-steps", str(max_steps), "--eval-limit", str(eval_limit), "--jobs", str(jobs)])
    todo = [r for r in runs if not r.summary.is_file()]
    _announce(wf, runs, todo, len(seeds_), max_steps, jobs, command, out, workflow, derived)
    if dry_run:
        for r in runs:
            typer.echo(f"{r.name} ({'finished' if r.summary.is_file() else 'to run'}):\n"
                       f"  alignkd {shlex.join(r.train_args(max_steps))}\n  alignkd {shlex.join(r.eval_args(eval_limit))}")
        return
    try:
        check_finished(runs, budget)
    except BudgetMismatch as exc:
        typer.secho(f"reproduce: {out}: {exc}", fg="red", err=True)
        raise typer.Exit(code=2) from None

    t_start = time.perf_counter()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": command, "workflow": str(workflow),
            "derived_workflow": str(derived) if derived else None, "seeds": seeds_, "presets": presets_,
            "subsets": subsets_, "budget": budget, "jobs": jobs, "git": _git_state(),
            "ablation_subset": cfg.ablation_subset, "prerequisites": prerequisites(wf, workflow, todo, derived, out)}
    meta["samples"] = _subset_sizes(wf, list(dict.fromkeys(r.subset for r in runs)))
    report = lambda: write_report(out, runs, meta, time.perf_counter() - t_start)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # `kill <pid>` stops the runs like Ctrl-C does
    try:
        failed = run_all(todo, len(runs), jobs, max_steps, eval_limit, budget, report)
    except KeyboardInterrupt:
        report()
        typer.secho(f"reproduce: interrupted; finished runs are kept in {out}: rerun the same command to continue",
                    fg="yellow", err=True)
        raise typer.Exit(code=130) from None
    typer.echo(report())
    typer.secho(f"reproduce: {out / 'reproduce.md'}, {out / 'reproduce.json'} "
                f"({_fmt(time.perf_counter() - t_start)})", fg="green", err=True)
    if failed:
        typer.secho(f"reproduce: {len(failed)} run(s) failed: " + ", ".join(f["run"] for f in failed)
                    + "; rerun the same command to retry them", fg="red", err=True)
        raise typer.Exit(code=1)


def _announce(wf, runs: list[Run], todo: list[Run], n_seeds: int, max_steps: int, jobs: int, command: str,
              out: Path, workflow: Path, derived: Path | None) -> None:
    steps = f"{max_steps} optimiser steps a stage" if max_steps > 0 else \
        f"the train section's budget (epochs {wf.train.pretrain.epochs:g} / {wf.train.finetune.epochs:g})"
    typer.echo(f"reproduce: {len(runs)} runs ({len(runs) // n_seeds} (subset, preset) pairs × {n_seeds} seeds), "
               f"{len(runs) - len(todo)} finished already, {len(todo)} to run, {jobs} at a time; {steps}\n"
               f"  {command}\n  output: {out}", err=True)
    if derived:
        typer.echo(f"  presets {', '.join(dict.fromkeys(r.preset for r in runs if r.workflow == str(derived)))} read "
                   f"{derived} (attention maps {workflow}'s cache lacks; cache in {out / 'cache'})", err=True)


def prerequisites(wf, workflow: Path, todo: list[Run], derived: Path | None, out: Path) -> list[dict]:
    """World → manifest → toy teacher (as `alignkd demo`), then every cache the runs to do read
    (each a no-op when already there). Returns the steps run, or with nothing to do, those of
    the invocation that ran them."""
    log = out / "prerequisites.json"
    if not todo:
        return json.loads(log.read_text()) if log.is_file() else []
    run = StepRunner(log, prog="reproduce")
    prepare_teacher(run, wf, str(workflow))
    for w, s in dict.fromkeys((r.workflow, r.subset) for r in todo if r.preset != "sft"):
        run(f"teacher dump on Ray ({s} subset{', Table 4 maps' if w == str(derived) else ''})",
            ["teacher-dump", "--workflow", w, "--subset", s, "--no-progress"])
    return run.steps


def _subset_sizes(wf, subsets: list[str]) -> dict[str, int]:
    """Samples per subset in the manifest (both stages), for Table 1's #samples column."""
    from pipeline.data.contract import read_manifest

    if not Path(wf.data.manifest).is_file():
        return {}
    t = read_manifest(wf.data.manifest, [f"in_{s}" for s in dict.fromkeys(subsets)])
    return {s: int(sum(t.column(f"in_{s}").to_pylist())) for s in dict.fromkeys(subsets)}


def _git_state() -> str:
    """HEAD of the repository this code runs from, '+dirty' with uncommitted changes ('' if no git)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return ""
