"""`alignkd` — the one console script. Each command group lives with the package that owns it;
this file only composes them, so `teacher_dump` and `student_train` stay independent."""

from __future__ import annotations

import typer

from alignkd import cache_cmd, demo_cmd, eval_cmd, probe_cmd, reproduce_cmd
from pipeline import data_cli, model_cli
from toy_world import cli as toy_cli
from student_train import cli as student_cli
from teacher_dump import cli as teacher_cli

app = typer.Typer(
    help="Align-KD distillation of MobileVLM V2 as a two-phase offline pipeline: "
    "cache the teacher once (teacher-dump), train students from the cache (student-train).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(toy_cli.app, name="toy", help="Generate the embedded toy world (images, data, tokenizer, tiny models).")
app.add_typer(data_cli.app, name="data", help="Build the manifest (Short/Long subsets) from LLaVA-format JSON.")
app.add_typer(model_cli.app, name="model", help="Inspect and smoke-test MobileVLM checkpoints.")
app.add_typer(cache_cmd.app, name="cache", help="Inspect, list and verify a teacher cache (zarr).")
app.command("teacher-dump")(teacher_cli.teacher_dump)
app.command("student-train")(student_cli.student_train)
app.command("eval")(eval_cmd.eval_model)
app.command("probe")(probe_cmd.probe)
app.command("demo")(demo_cmd.demo)
app.command("reproduce")(reproduce_cmd.reproduce)

if __name__ == "__main__":
    app()
