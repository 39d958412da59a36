"""`alignkd demo` — the whole two-phase pipeline on the embedded toy world, end to end.

Each step is a real `alignkd` command run as a subprocess (so what the report lists is exactly
what a user would type): toy world → manifest → toy teacher (sft, on the Long subset, larger
budget) → teacher dump on Ray → Align-KD student from the cache and an SFT-only student on the
same data and budget → held-out evaluation of all three → report directory.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import typer


def alignkd_argv() -> list[str]:
    # the console script next to this interpreter (the venv's), else `python -m alignkd.cli`
    exe = Path(sys.executable).with_name("alignkd")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "alignkd.cli"]


class StepRunner:
    """Runs steps, streams their output, records the exact commands and their wall times."""

    def __init__(self, log_path: Path, prog: str = "demo") -> None:
        self.steps: list[dict] = []
        self.log_path = log_path
        self.prog = prog

    def __call__(self, title: str, args: list[str]) -> None:
        cmd = alignkd_argv() + args
        n = len(self.steps) + 1
        typer.secho(f"\n==> [{n}] {title}\n    $ alignkd {shlex.join(args)}", fg="cyan", err=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        secs = time.perf_counter() - t0
        self.steps.append({"step": n, "title": title, "command": "alignkd " + shlex.join(args), "seconds": round(secs, 1), "rc": rc})
        self.log_path.write_text(json.dumps(self.steps, indent=2))
        if rc != 0:
            typer.secho(f"{self.prog}: step {n} ({title}) failed with exit code {rc}; see its output above", fg="red", err=True)
            raise typer.Exit(code=rc)
        typer.secho(f"    done in {secs:.0f} s", fg="green", err=True)

    def parallel(self, steps: list[tuple[str, list[str]]], logs: Path, jobs: int = 2) -> None:
        """Run independent steps `jobs` at a time, one CPU thread each (OMP_NUM_THREADS=1), each
        one's output to `logs`/<step>.log (shown when it ends). On 2 cores the three held-out evals
        and the probe take less wall time so than one after another with 2 threads each: a 1,400-
        question eval does not keep two threads busy (two 1-thread evals side by side took 43 s,
        one after the other at 2 threads 2 x 28.5 s). Any failure stops the command after the
        running steps end, with its log's path."""
        from concurrent.futures import ThreadPoolExecutor

        logs.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        first = len(self.steps) + 1

        def one(i: int, title: str, args: list[str]) -> dict:
            n, log = first + i, logs / f"step{first + i}.log"
            typer.secho(f"\n==> [{n}] {title} (in parallel, output in {log})\n    $ alignkd {shlex.join(args)}",
                        fg="cyan", err=True)
            t0 = time.perf_counter()
            with log.open("w") as f:
                rc = subprocess.call(alignkd_argv() + args, stdout=f, stderr=subprocess.STDOUT, env=env)
            secs = time.perf_counter() - t0
            tail = log.read_text(errors="replace").splitlines()[-(40 if rc else 3):]
            typer.echo("\n".join(f"    [{n}] {ln}" for ln in tail), err=True)
            typer.secho(f"    [{n}] {'done' if rc == 0 else f'FAILED (exit {rc})'} in {secs:.0f} s", err=True,
                        fg="green" if rc == 0 else "red")
            return {"step": n, "title": title, "command": "alignkd " + shlex.join(args), "seconds": round(secs, 1),
                    "rc": rc, "parallel": True, "log": str(log)}

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            done = list(pool.map(lambda a: one(*a), [(i, t, a) for i, (t, a) in enumerate(steps)]))
        self.steps += done
        self.log_path.write_text(json.dumps(self.steps, indent=2))
        bad = [d for d in done if d["rc"] != 0]
        if bad:
            b = bad[0]
            typer.secho(f"{self.prog}: step {b['step']} ({b['title']}) failed with exit code {b['rc']}; see {b['log']}",
                        fg="red", err=True)
            raise typer.Exit(code=b["rc"])


def demo(
    workflow: Path = typer.Option(Path("workflows/toy.yaml"), help="workflow YAML (a toy world workflow)"),
    report: Path = typer.Option(None, help="report directory (default <run_dir>/report)"),
    fresh: bool = typer.Option(False, help="delete the workflow's run_dir first (otherwise finished steps are reused where safe)"),
) -> None:
    """Run the whole pipeline on the toy world and write a report (markdown, plots, commands)."""
    import shutil

    from pipeline.workflow import load_workflow

    wf = load_workflow(workflow)
    run_dir = Path(wf.run_dir)
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    report = report or run_dir / "report"
    report.mkdir(parents=True, exist_ok=True)
    w = str(workflow)
    students = run_dir / "students"
    t_start = time.perf_counter()
    run = StepRunner(report / "commands.json")

    prepare_teacher(run, wf, w)
    for d in (students / "alignkd", students / "sft"):
        # a half-finished earlier demo must not be mistaken for a finished one: retrain
        if d.exists() and not (d / "config.json").is_file():
            shutil.rmtree(d)
    subset = wf.demo.student_subset
    run(f"teacher dump on Ray ({subset} subset)", ["teacher-dump", "--workflow", w, "--subset", subset])
    for name, mode in (("alignkd", "cached"), ("sft", "sft")):
        out = students / name
        if (out / "finetune" / "final" / "config.json").is_file():
            continue
        if out.exists():
            shutil.rmtree(out)
        run(f"train the {name} student ({mode} mode, {subset} subset)",
            ["student-train", "--workflow", w, "--subset", subset, "--stage", "all", "--mode", mode, "--out", str(out),
             "--num-procs", str(wf.demo.student_ranks)])
    models = {"teacher": Path(wf.models.teacher), "sft": students / "sft" / "finetune" / "final",
              "alignkd": students / "alignkd" / "finetune" / "final"}
    finals = []  # independent of each other: two at a time, a thread each
    for name, path in models.items():
        args = ["eval", "--workflow", w, "--model", str(path), "--out", str(report / "eval" / name)]
        args += ["--teacher", str(models["teacher"])] if name != "teacher" else []
        if wf.demo.eval_limit:
            args += ["--limit", str(wf.demo.eval_limit)]
        finals.append((f"evaluate the {name} model on the held-out split", args))
    finals.append(("layer probe of the teacher (paper §3.1)", ["probe", "--model", str(models["teacher"]), "--data", w,
                                                               "--out", str(report / "probe_teacher"), "--limit", "32"]))
    run.parallel(finals, report / "logs")
    heatmaps = _draw_heatmaps(run, wf, w, subset, report)

    from alignkd.demo_report import write_report

    summary = write_report(report, models, students, heatmaps, run.steps, time.perf_counter() - t_start)
    typer.secho(f"\n{summary}\nreport: {report / 'summary.md'}", fg="green")


def prepare_teacher(run: StepRunner, wf, w: str) -> None:
    """Toy world → manifest → toy teacher (sft on demo.teacher_subset with its own budget).
    Shared with `alignkd reproduce`; finished steps are no-ops, a half-trained teacher is retrained,
    and a finished one trained with other `demo.teacher_*` settings is refused (exit 1, naming what
    differs) rather than silently reused."""
    import shutil

    run("generate the toy world", ["toy", "world", "--workflow", w])
    run("build the manifest (Short/Long subsets)", ["data", "build", "--workflow", w, "--no-progress"])
    teacher = Path(wf.models.teacher)
    if teacher.exists() and not (teacher / "config.json").is_file():
        shutil.rmtree(teacher)
    recipe = teacher_recipe(wf)
    if (teacher / "config.json").is_file():
        problem = check_teacher_recipe(teacher, recipe)
        if problem:
            typer.secho(f"{run.prog}: {problem}", fg="red", err=True)
            raise typer.Exit(code=1)
        return
    t_run = Path(wf.run_dir) / "teacher_run"
    if t_run.exists():
        shutil.rmtree(t_run)
    d = wf.demo
    args = ["student-train", "--workflow", w, "--subset", d.teacher_subset, "--mode", "sft", "--out", str(t_run),
            "--num-procs", str(d.teacher_ranks), "--stage", "all", "--init", recipe["init"],
            "--set", f"train.pretrain.max_steps={d.teacher_pretrain_steps}",
            "--set", f"train.finetune.max_steps={d.teacher_finetune_steps}"]
    args += ["--lr", str(d.teacher_lr)] if d.teacher_lr else []
    args += ["--projector-lr", str(d.teacher_projector_lr)] if d.teacher_projector_lr else []
    # one command, one launch: pre-training from the init, then fine-tuning from its export
    run("train the toy teacher (sft, pre-training then fine-tuning)", args)
    shutil.copytree(t_run / "finetune" / "final", wf.models.teacher)
    from pipeline.models.original_compat import point_vision_tower  # torch: not at CLI start

    point_vision_tower(Path(wf.models.teacher))  # the copy's own tower, not the training run's
    (teacher / TEACHER_RECIPE).write_text(json.dumps(recipe, indent=2) + "\n")


TEACHER_RECIPE = "alignkd_teacher.json"  # in the teacher's directory: the demo settings it was trained with


def teacher_recipe(wf) -> dict:
    """What the toy teacher is trained from and with: the world's init and the workflow's
    `demo.teacher_*` settings (a teacher of other settings is another teacher)."""
    import dataclasses

    settings = {k: v for k, v in dataclasses.asdict(wf.demo).items() if k.startswith("teacher_")}
    return {"init": str(Path(wf.world.dir) / "teacher_init"), **settings}


def check_teacher_recipe(teacher: Path, recipe: dict) -> str | None:
    """None if the teacher in `teacher` was trained with `recipe`, else what differs: a finished
    teacher is reused, so a changed setting (e.g. demo.teacher_finetune_steps) must not silently
    keep the old one, nor the cache and students built from it."""
    path = teacher / TEACHER_RECIPE
    fix = (f"delete {teacher.parent} (its cache and students were built from that teacher) or run "
           "`alignkd demo --fresh`, or point models.teacher elsewhere")
    try:
        have = json.loads(path.read_text())
    except FileNotFoundError:
        return f"{teacher} holds a teacher without {TEACHER_RECIPE} (trained by an earlier alignkd); the settings it was trained with are unknown: {fix}"
    except (OSError, json.JSONDecodeError) as exc:
        return f"{path}: unreadable ({exc}): {fix}"
    diff = [f"{k} {have.get(k)!r} -> {recipe.get(k)!r}" for k in sorted(set(have) | set(recipe)) if have.get(k) != recipe.get(k)]
    if diff:
        return f"{teacher} was trained with other settings than the workflow's ({'; '.join(diff)}): {fix}"
    return None


def _draw_heatmaps(run: StepRunner, wf, w: str, subset: str, report: Path) -> list[Path]:
    """Teacher T→V attention over the image for the first few cached samples that have one; none
    when the store keeps no attention (cache.attention: recompute: the student rebuilds it)."""
    from cache_schema import CacheReader
    from pipeline.data.contract import read_manifest

    if CacheReader(wf.cache_path(subset)).provenance.attention == "recompute":
        typer.echo("    (no attention heat maps: the cache keeps no attention, cache.attention: recompute)")
        return []

    rows = read_manifest(wf.data.manifest, ["sample_id", "image", f"in_{subset}"]).to_pylist()
    ids = [r["sample_id"] for r in rows if r["image"] and r[f"in_{subset}"]][: wf.demo.heatmaps]
    out = []
    for i, sid in enumerate(ids):
        png = report / f"attention_{i}.png"
        run(f"draw the teacher's T→V attention for {sid}",
            ["cache", "show", str(wf.cache_path(subset)), sid, "--tokenizer", wf.data.tokenizer,
             "--manifest", wf.data.manifest, "--png", str(png)])
        out.append(png)
    return out
