"""Placeholder command; filled by its issue."""

import typer


def probe(workflow: str = typer.Option("workflows/toy.yaml", help="workflow YAML")) -> None:
    """Not built yet."""
    raise typer.Exit(code=2)
