"""`alignkd` — the one console script. Each command group lives with the package that owns it;
this file only composes them, so `teacher_dump` and `student_train` stay independent.

A cause outside the program (alignkd.errors) ends in one line `error: ...` and exit code 1; a
bug keeps its traceback; `--debug` (or ALIGNKD_DEBUG=1) shows the traceback for everything."""

from __future__ import annotations

import os
import sys
import traceback

import typer

from alignkd import cache_cmd, data_cmd, demo_cmd, eval_cmd, model_cmd, probe_cmd, reproduce_cmd
from alignkd.errors import debug_enabled, user_message
from student_train import cli as student_cli
from teacher_dump import cli as teacher_cli
from toy_world import cli as toy_cli


class _App(typer.Typer):
    """The Typer app whose console-script call turns user-facing errors into one line."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            msg = user_message(exc)
            if msg is None or debug_enabled():
                raise
            traceback.clear_frames(exc.__traceback__)
            typer.echo(f"error: {msg}", err=True)
            sys.exit(1)


app = _App(
    help="Align-KD distillation of MobileVLM V2 as a two-phase offline pipeline: "
    "cache the teacher once (teacher-dump), train students from the cache (student-train).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="show the full traceback of any error "
                                     "(also ALIGNKD_DEBUG=1)")) -> None:
    if debug:
        os.environ["ALIGNKD_DEBUG"] = "1"  # inherited by the ranks and actors we launch


app.add_typer(toy_cli.app, name="toy", help="Generate the embedded toy world (images, data, tokenizer, tiny models).")
app.add_typer(data_cmd.app, name="data", help="Build the manifest (Short/Long subsets) from LLaVA-format JSON.")
app.add_typer(model_cmd.app, name="model", help="Inspect and smoke-test MobileVLM checkpoints.")
app.add_typer(cache_cmd.app, name="cache", help="Inspect, list and verify a teacher cache (zarr).")
app.command("teacher-dump")(teacher_cli.teacher_dump)
app.command("student-train")(student_cli.student_train)
app.command("eval")(eval_cmd.eval_model)
app.command("probe")(probe_cmd.probe)
app.command("demo")(demo_cmd.demo)
app.command("reproduce")(reproduce_cmd.reproduce)

if __name__ == "__main__":
    app()
