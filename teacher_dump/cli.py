"""`alignkd teacher-dump`: phase 1, run the teacher once over a subset on Ray and write the cache.

    alignkd teacher-dump --workflow workflows/toy.yaml --subset short          (make teacher-cache)
    alignkd teacher-dump --workflow W --subset long --ray-address auto --workers 8
    alignkd teacher-dump --workflow W --subset short --dry-run                 (plan and size only)

Re-running the same command resumes an interrupted dump.
"""

from __future__ import annotations

from typing import Optional

import typer


def teacher_dump(
    workflow: str = typer.Option("workflows/toy.yaml", help="workflow YAML"),
    subset: str = typer.Option(..., help="manifest subset to cache: short | long (data.subsets)"),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster to join (e.g. auto, ray://host:10001); default: a local Ray"),
    workers: Optional[int] = typer.Option(None, help="teacher actors (default dump.workers)"),
    batch_size: Optional[int] = typer.Option(None, help="samples per teacher forward (default dump.batch_size)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate and print the plan (units, samples, images, size); run nothing"),
    progress: bool = typer.Option(True, help="tqdm progress bar"),
) -> None:
    """Phase 1: run the teacher once over a subset on Ray and write the zarr cache."""
    from cache_schema import CacheError
    from pipeline.workflow import WorkflowError, load_workflow
    from teacher_dump.lock import DumpLockedError
    from teacher_dump.run import DumpError, dump
    from teacher_dump.validate import DumpInputError, check_inputs

    try:
        wf = load_workflow(workflow)
        job = check_inputs(wf, subset, workers=workers, batch_size=batch_size, dry_run=dry_run)
        dump(job, address=ray_address, dry_run=dry_run, progress=progress, log=lambda m: typer.echo(m, err=True))
    except (WorkflowError, DumpInputError, DumpError, DumpLockedError, CacheError) as exc:
        typer.echo(f"teacher-dump: {exc}", err=True)
        raise typer.Exit(code=1) from None
