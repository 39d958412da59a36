"""`alignkd toy world`: generate the embedded toy world of a workflow (see toy_world/world.py)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from pipeline.workflow import DEFAULT_WORKFLOW, WorkflowError, load_workflow

app = typer.Typer(no_args_is_help=True)


@app.command("world")
def world(
    workflow: Path = typer.Option(DEFAULT_WORKFLOW, "--workflow", "-w", help="workflow YAML (its world: section)"),
    out: Path | None = typer.Option(None, "--out", help="output directory (default: the workflow's world.dir)"),
    force: bool = typer.Option(False, "--force", help="replace an existing world of a different spec"),
) -> None:
    """Generate images, scene ground truth, LLaVA JSON (pretrain/finetune/eval), a tokenizer and
    the teacher/student inits, deterministically from world.seed. Rerunning with the same spec
    leaves an intact world untouched."""
    from toy_world.generate import WorldError  # heavy imports after argument parsing
    from toy_world.world import build_world

    try:
        wf = load_workflow(workflow)
    except WorkflowError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=2)
    target = Path(out or wf.world.dir)
    t0 = time.perf_counter()
    try:
        meta = build_world(wf, target, force=force, log=lambda s: typer.echo(f"  {s}"))
    except WorldError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1)
    secs = time.perf_counter() - t0
    state = "already up to date (nothing rewritten)" if meta.get("up_to_date") else f"generated in {secs:.1f} s"
    typer.echo(f"toy world {target}: {state}")
    for line in summary_lines(meta, target):
        typer.echo(line)
    if target.resolve() != Path(wf.world.dir).resolve():
        typer.echo(f"note: {workflow} reads the world from {wf.world.dir}, not {target}")
    typer.echo(f"next: alignkd data build --workflow {workflow}")


def summary_lines(meta: dict, root: Path) -> list[str]:
    st, sp = meta["stats"], meta["spec"]
    c, ln = st["counts"], st["lengths"]
    fmt = lambda d: ", ".join(f"{k} {v}" for k, v in d.items())
    uses = st["image_uses"]
    lines = [
        f"  seed {sp['seed']}, {sp['image_size']} px, {sp['num_vision_tokens']} vision tokens, "
        f"subset limits short {sp['short_limit']} / long {sp['long_limit']} embedded tokens",
        f"  images: {c['train_images']} train ({uses['used_once']} in one sample, {uses['used_several']} in several, "
        f"max {uses['max_uses']}), {c['eval_images']} held out for eval",
        f"  pretrain {c['pretrain']} captions; finetune {c['finetune']} records ({fmt(st['finetune_kinds'])}); "
        f"eval {c['eval']} one-word questions",
        f"  finetune turns per record: {fmt(st['finetune_turns'])}",
        f"  finetune turns per task: {fmt(st['finetune_tasks'])}",
        f"  eval per task: {fmt(st['eval_tasks'])}",
    ]
    for name in ("pretrain", "finetune", "eval"):
        x = ln[name]
        lines.append(f"  {name} embedded length {x['min']}..{x['max']} (median {x['median']}): short {x['short']}, "
                     f"long {x['long']}, long-only {x['long_only']}, over long {x['over_long']}")
    b = st["blind_accuracy"]
    lines.append(f"  image-blind eval ceiling (per-question majority): {b['overall']:.2f} ({fmt(b['per_task'])})")
    lines.append(f"  tokenizer: {c['tokenizer_vocab']} tokens")
    for sub in ("images", "data", "tokenizer", "vision_tower", "teacher_init", "student_init"):
        p = root / sub
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.exists() else 0
        lines.append(f"  {str(p) + '/':<40} {size / 1e6:7.2f} MB")
    return lines
