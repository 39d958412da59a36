"""`alignkd data build`: LLaVA-format JSON datasets → the manifest (parquet), rejects, count table."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer

from pipeline.workflow import DEFAULT_WORKFLOW, WorkflowError, load_workflow, with_overrides

app = typer.Typer(no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Build the manifest (Short/Long subsets) from LLaVA-format JSON."""


@app.command("build")
def build(
    workflow: Path = typer.Option(DEFAULT_WORKFLOW, "--workflow", "-w", help="workflow YAML (its `data` section)"),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", help="override data.num_workers"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
) -> None:
    """Tokenise every dataset of the workflow with its template, measure embedded lengths, and
    write the manifest, the rejects JSONL and the per-dataset count table (Table 2 style)."""
    from pipeline.data import ManifestError
    from pipeline.data.manifest import build_manifest, report_paths

    try:
        wf = load_workflow(workflow)
        if num_workers is not None:
            wf = with_overrides(wf, {"data.num_workers": num_workers})
        command = ["alignkd", "data", "build", "--workflow", str(workflow)]
        command += ["--num-workers", str(num_workers)] if num_workers is not None else []
        report = build_manifest(wf, command=shlex.join(command), progress=progress)
    except (WorkflowError, ManifestError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(report.markdown())
    md, js = report_paths(wf.data.manifest)
    typer.echo(f"manifest: {wf.data.manifest}\nrejects:  {wf.data.rejects}\ncounts:   {md}, {js}")
