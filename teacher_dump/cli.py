"""`alignkd teacher-dump` (placeholder, filled by the teacher-dump issue)."""

import typer


def teacher_dump(workflow: str = typer.Option("workflows/toy.yaml", help="workflow YAML")) -> None:
    """Phase 1: run the teacher once over a subset on Ray and write the zarr cache."""
    raise typer.Exit(code=2)
