"""Placeholder command group; filled by its issue."""

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("todo")
def todo() -> None:
    """Not built yet."""
    raise typer.Exit(code=2)
