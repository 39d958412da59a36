"""`alignkd student-train` (placeholder, filled by the student-train issue)."""

import typer


def student_train(workflow: str = typer.Option("workflows/toy.yaml", help="workflow YAML")) -> None:
    """Phase 2: train the student with DeepSpeed ZeRO-2 from the cached targets."""
    raise typer.Exit(code=2)
