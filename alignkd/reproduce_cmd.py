"""`alignkd reproduce` — the paper's Tables 3 and 4 and Table 1's bottom block, at toy scale.

    alignkd reproduce --workflow workflows/toy.yaml          (make reproduce: 33 runs, see below)
    alignkd reproduce --quick                                (2 presets × 1 seed × 2 steps: a smoke test)
    alignkd reproduce --presets sft,all --seeds 0,1,2,3,4 --out runs/toy/five_seeds

Prerequisites as in `alignkd demo` (toy world → manifest → toy teacher), then the teacher cache
of every subset the runs read. Every (subset, preset) pair of `reproduce:` is trained once per
seed — `alignkd student-train --stage all` then `alignkd eval` — into
<out>/runs/<subset>/<preset>/seed_<S>/ (log.txt holds both commands' output), `reproduce.jobs`
runs at a time. A run with eval/summary.json is finished and skipped, so rerunning the same
command continues an interrupted reproduction (Ctrl-C or `kill` stops the running ones cleanly);
finished runs of another budget (train section, --max-steps, --eval-limit) are refused rather
than mixed in. Results (mean ± std over seeds) are rewritten after every finished run:
<out>/reproduce.md and <out>/reproduce.json.

Cost with the toy workflow's train section (CPU seconds per run, train + eval, measured): SFT ≈ 110,
Table 3's distilled runs ≈ 170, Table 4's ≈ 300–330 (their store holds every map, and a read
decodes all of them). The 33 default runs ≈ 6,700 CPU s ≈ 60 min at 2 jobs on 2 cores, plus the
toy teacher (≈ 11 min, shared with `alignkd demo`) and three teacher dumps (≈ 5 min).

Table 4's presets distil attention blocks the workflow's cache may not hold (vv, tt, full, the last
layer). Then the runs that need them read <out>/workflow.yaml instead: the same workflow with
those blocks added to cache.blocks/layers and its own cache.dir (<out>/cache).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import typer

from alignkd.demo_cmd import _alignkd, _Runner, prepare_teacher
from alignkd.reproduce_report import write_atomic, write_report

QUICK = {"seeds": [0], "presets": ["sft", "all"], "max_steps": 2, "eval_limit": 16}
HEARTBEAT_S = 60.0  # a progress line at least this often while runs are going


@dataclass(frozen=True)
class Run:
    """One student: `student-train --stage all` then `eval`, in `dir`."""

    subset: str
    preset: str
    seed: int
    dir: Path
    workflow: str  # the workflow file its commands read
    teacher: str = "runs/toy/teacher"  # the teacher its eval measures transfer from (models.teacher)

    @property
    def name(self) -> str:
        return f"{self.subset}/{self.preset}/seed_{self.seed}"

    @property
    def summary(self) -> Path:
        return self.dir / "eval" / "summary.json"

    def train_args(self, max_steps: int) -> list[str]:
        mode = "sft" if self.preset == "sft" else "cached"
        args = ["student-train", "--workflow", self.workflow, "--subset", self.subset, "--stage", "all",
                "--mode", mode, "--preset", self.preset, "--seed", str(self.seed), "--out", str(self.dir),
                "--resume"]  # an interrupted run continues (a finished stage is skipped)
        return args + (["--max-steps", str(max_steps)] if max_steps > 0 else [])

    def eval_args(self, eval_limit: int) -> list[str]:
        args = ["eval", "--workflow", self.workflow, "--model", str(self.dir / "finetune" / "final"),
                "--out", str(self.dir / "eval"), "--teacher", self.teacher]
        return args + (["--limit", str(eval_limit)] if eval_limit > 0 else [])


# ---------------------------------------------------------------------------------- planning
def _csv(text: str | None, kind=str) -> list | None:
    return None if text is None else [kind(x) for x in text.split(",") if x.strip()]


def attn_needs(presets: list[str]) -> set[tuple[str, str]]:
    """(layer, block) attention maps the presets distil (the cache must hold them)."""
    from pipeline.workflow import LossConfig
    from student_train.losses import resolve_loss

    return {k for p in presets for k in resolve_loss(LossConfig(preset=p)).attn_keys}


def pairs(cfg, presets: list[str], subsets: list[str]) -> list[tuple[str, str]]:
    """(subset, preset): the ablations on cfg.ablation_subset, then Table 1's block per subset."""
    out = [(cfg.ablation_subset, p) for p in presets]
    out += [(s, p) for s in subsets for p in cfg.subset_presets if (s, p) not in out]
    return out


def cache_workflow(workflow: Path, wf, needs: set[tuple[str, str]], out: Path) -> Path:
    """<out>/workflow.yaml: `workflow` with cache.blocks/layers covering `needs`, cache.dir <out>/cache."""
    import yaml

    from pipeline.workflow import load_workflow

    raw = yaml.safe_load(workflow.read_text()) or {}
    cache = raw.setdefault("cache", {})
    cache["layers"] = list(dict.fromkeys([*wf.cache.layers, *sorted(l for l, _ in needs)]))
    cache["blocks"] = list(dict.fromkeys([*wf.cache.blocks, *sorted(b for _, b in needs)]))
    cache["dir"] = str(out / "cache")
    path = out / "workflow.yaml"
    path.write_text(f"# Written by `alignkd reproduce` from {workflow}: the same workflow, with a teacher cache that\n"
                    f"# also holds the attention maps of Table 4's ablations (its own cache.dir).\n"
                    + yaml.safe_dump(raw, sort_keys=False))
    load_workflow(path)  # strict: must read back
    return path


def make_plan(workflow: Path, wf, seeds: list[int], presets: list[str], subsets: list[str],
              out: Path) -> tuple[list[Run], Path | None]:
    """The runs (seed-major: a cut-short reproduction still has whole tables) and the derived cache
    workflow if a preset needs one. A run reads the workflow's own cache when it holds the
    attention maps its preset distils (reading a store decodes every map it holds: the smaller
    store is faster), else the derived one."""
    from student_train.losses import PRESETS

    cfg = wf.reproduce
    for s in dict.fromkeys([cfg.ablation_subset, *subsets]):
        wf.subset_limit(s)  # an unknown subset is refused, naming data.subsets
    for p in dict.fromkeys([*presets, *cfg.subset_presets]):
        attn_needs([p])  # an unknown preset is refused, naming the known ones
    have = {(l, b) for l in wf.cache.layers for b in wf.cache.blocks}
    out.mkdir(parents=True, exist_ok=True)
    derived = None
    wf_of: dict[str, str] = {}  # preset -> the workflow file its runs read
    for p in dict.fromkeys(p for _, p in pairs(cfg, presets, subsets)):
        if attn_needs([p]) <= have:
            wf_of[p] = str(workflow)
        else:
            # the derived cache holds what any preset can ask for, so that one store serves every
            # invocation (another --presets must not become a provenance mismatch with it)
            derived = derived or cache_workflow(workflow, wf, attn_needs(list(PRESETS)), out)
            wf_of[p] = str(derived)
    runs = [Run(s, p, seed, out / "runs" / s / p / f"seed_{seed}", wf_of[p], wf.models.teacher)
            for seed in seeds for s, p in pairs(cfg, presets, subsets)]
    return runs, derived


def budget_of(wf, max_steps: int, eval_limit: int) -> dict:
    """What makes two finished runs comparable: the train section (fingerprint) and the budget."""
    train = json.dumps(dataclasses.asdict(wf.train), sort_keys=True, default=str)
    return {"train_fingerprint": hashlib.sha256(train.encode()).hexdigest()[:16],
            "max_steps": max_steps, "eval_limit": eval_limit}


class BudgetMismatch(ValueError):
    """Finished runs in the output directory were trained with another budget."""


def _budget_str(b: dict) -> str:
    return f"max_steps {b.get('max_steps')}, eval_limit {b.get('eval_limit')}, train section {b.get('train_fingerprint')}"


def check_finished(runs: list[Run], budget: dict) -> None:
    """A finished run of another budget must not be mixed in (BudgetMismatch); an unfinished one
    is restarted from scratch."""
    stale, got = [], None
    for r in runs:
        rec = r.dir / "reproduce_run.json"
        had = json.loads(rec.read_text()).get("budget") if rec.is_file() else None
        if had is None or had == budget:
            continue
        if r.summary.is_file():
            stale.append(r.name)
            got = had
        else:
            shutil.rmtree(r.dir)
    if stale:
        raise BudgetMismatch(f"{len(stale)} finished run(s) here were trained with another budget ({_budget_str(got)}) "
                             f"than this command's ({_budget_str(budget)}): {', '.join(stale)}. "
                             "Choose another --out, or remove them.")


# ---------------------------------------------------------------------------------- running
def _env() -> dict[str, str]:
    env = dict(os.environ)
    # one OpenMP thread per rank and per eval, as launch.py does: parallelism comes from --jobs.
    # Measured on the toy student: 2 threads per rank run a step in 0.2-0.3 s on an idle 2-core
    # machine but in 4-7 s as soon as anything else runs (spin-waiting); 1 thread, ~1-2 s loaded.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


class _Children:
    """The commands running now, each in its own process group (the CLI, the DeepSpeed launcher,
    its ranks and data workers), so that an interrupted reproduce stops whole trees, not orphans."""

    def __init__(self) -> None:
        self.procs: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = False

    def call(self, args: list[str], log, env: dict) -> tuple[int, float]:
        """Run `alignkd args` → (exit code, CPU seconds of it and the processes it waited for:
        the launcher and its ranks), so a run's cost is known even on a shared machine."""
        with self.lock:
            if self.stopping:
                return 130, 0.0
            p = subprocess.Popen(_alignkd() + args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            self.procs.add(p)
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            with self.lock:
                self.procs.discard(p)
        p.returncode = os.waitstatus_to_exitcode(status)
        return p.returncode, ru.ru_utime + ru.ru_stime

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            for p in self.procs:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass


CHILDREN = _Children()


def execute(r: Run, max_steps: int, eval_limit: int, budget: dict, env: dict) -> dict:
    """Train (unless already exported) and evaluate one run; output to <dir>/log.txt."""
    r.dir.mkdir(parents=True, exist_ok=True)
    rec = {"run": r.name, "subset": r.subset, "preset": r.preset, "seed": r.seed, "budget": budget,
           "commands": ["alignkd " + shlex.join(r.train_args(max_steps)), "alignkd " + shlex.join(r.eval_args(eval_limit))]}
    write_atomic(r.dir / "reproduce_run.json", json.dumps(rec, indent=2))
    with open(r.dir / "log.txt", "a") as log:
        for what, args in (("train", r.train_args(max_steps)), ("eval", r.eval_args(eval_limit))):
            if what == "train" and (r.dir / "finetune" / "final" / "config.json").is_file():
                continue
            log.write(f"\n$ alignkd {shlex.join(args)}\n")
            log.flush()
            t0 = time.perf_counter()
            rc, cpu = CHILDREN.call(args, log, env)
            rec[f"{what}_seconds"], rec[f"{what}_cpu_seconds"] = round(time.perf_counter() - t0, 1), round(cpu, 1)
            if rc != 0:
                rec.update(rc=rc, failed=what)
                break
    write_atomic(r.dir / "reproduce_run.json", json.dumps(rec, indent=2))
    return rec


def _progress(r: Run) -> str:
    """Where a running run is: stage and optimiser step, from its metrics.jsonl."""
    if (r.dir / "finetune" / "final" / "config.json").is_file():
        return f"{r.name} eval"
    for stage in ("finetune", "pretrain"):
        info = r.dir / stage / "run.json"
        if info.is_file():
            m = r.dir / stage / "metrics.jsonl"
            done = len(m.read_text().splitlines()) if m.is_file() else 0
            return f"{r.name} {stage} {done}/{json.loads(info.read_text()).get('total_steps', '?')}"
    return f"{r.name} starting"


def _fmt(secs: float) -> str:
    secs = int(secs)
    return f"{secs // 3600}h{secs // 60 % 60:02d}m" if secs >= 3600 else f"{secs // 60}m{secs % 60:02d}s"


def run_all(todo: list[Run], total: int, jobs: int, max_steps: int, eval_limit: int, budget: dict,
            on_done) -> list[dict]:
    """Run `todo` on `jobs` workers, `on_done()` after each; returns the failed runs' records."""
    env, t0 = _env(), time.perf_counter()
    say = lambda msg: typer.echo(f"[reproduce {_fmt(time.perf_counter() - t0)}] {msg}", err=True)  # noqa: E731
    started: dict[str, float] = {}  # run name -> when a worker took it

    def job(r: Run) -> dict:
        started[r.name] = time.perf_counter()
        return execute(r, max_steps, eval_limit, budget, env)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running = {pool.submit(job, r): r for r in todo}
        try:
            return _follow(running, started, total, jobs, say, on_done)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: no new run starts, the running ones stop
            say("interrupted: stopping the running runs; rerun the same command to continue")
            pool.shutdown(wait=False, cancel_futures=True)
            CHILDREN.stop()
            raise


def _follow(running: dict, started: dict, total: int, jobs: int, say, on_done) -> list[dict]:
    """Report each run as it finishes (run k of N, wall time, exact match) and, every HEARTBEAT_S,
    where the running ones are and the ETA: the mean run time so far for every run left, less what
    the running ones have done, spread over the workers."""
    done_before, times, failed = total - len(running), [], []
    while running:
        finished, _ = wait(running, timeout=HEARTBEAT_S, return_when=FIRST_COMPLETED)
        for fut in finished:
            r = running.pop(fut)
            rec = fut.result()
            n = done_before + len(times) + len(failed) + 1
            secs = rec.get("train_seconds", 0) + rec.get("eval_seconds", 0)
            if rec.get("rc"):
                failed.append(rec)
                tail = (r.dir / "log.txt").read_text().splitlines()[-15:]
                say(f"run {n}/{total} {r.name} FAILED in {rec['failed']} (exit {rec['rc']}); "
                    f"log {r.dir / 'log.txt'}:\n    " + "\n    ".join(tail))
            else:
                times.append(secs)
                em = json.loads(r.summary.read_text())["overall"]
                say(f"run {n}/{total} {r.name} done in {_fmt(secs)}: exact match {em:.3f}")
            on_done()
        left = len(running)
        if not left:
            break
        eta = "ETA after the first run"
        if times:
            mean, now = sum(times) / len(times), time.perf_counter()
            # a running run past the mean still has some way to go: a quarter of the mean, at least
            work = sum(max(0.25 * mean, mean - (now - started[r.name])) if r.name in started else mean
                       for r in running.values())
            eta = f"ETA {_fmt(work / min(jobs, left))}"
        active = [_progress(r) for f, r in running.items() if f.running()]
        say(f"{total - left}/{total} runs done, {left} left, {eta}; running: {', '.join(active)}")
    return failed


# ------------------------------------------------------------------------------------ command
def reproduce(
    workflow: Path = typer.Option(Path("workflows/toy.yaml"), help="workflow YAML (toy world; its reproduce: section)"),
    seeds: str = typer.Option(None, help="comma-separated seeds (default reproduce.seeds: 0,1,2)"),
    presets: str = typer.Option(None, help="ablation presets on the Short subset (default reproduce.presets: "
                                           "sft,rkl,attn,focus,all,vv,tt,full,last)"),
    subsets: str = typer.Option(None, help="Table 1's subsets, each with reproduce.subset_presets (default short,long)"),
    out: Path = typer.Option(None, help="output directory (default reproduce.out, else <run_dir>/reproduce[_quick])"),
    max_steps: int = typer.Option(None, help="optimiser steps per stage of every run "
                                             "(default reproduce.max_steps; 0: the train section's)"),
    jobs: int = typer.Option(None, help="runs at once (default reproduce.jobs)"),
    eval_limit: int = typer.Option(None, help="evaluate on the first N held-out questions (0: all)"),
    quick: bool = typer.Option(False, help="smoke test: seed 0, presets sft and all, 2 steps a stage, 16 questions"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and the commands, run nothing"),
) -> None:
    """Reproduce the paper's Tables 3, 4 and Table 1's bottom block at toy scale (mean ± std over seeds)."""
    from pipeline.workflow import WorkflowError, load_workflow

    try:
        wf = load_workflow(workflow)
    except WorkflowError as exc:
        typer.secho(f"reproduce: {exc}", fg="red", err=True)
        raise typer.Exit(code=2) from None
    cfg, q = wf.reproduce, (QUICK if quick else {})
    try:
        seeds_ = _csv(seeds, int) or q.get("seeds") or cfg.seeds
    except ValueError:
        raise typer.BadParameter(f"--seeds {seeds!r}: use comma-separated integers, e.g. 0,1,2") from None
    presets_ = _csv(presets) or q.get("presets") or cfg.presets
    subsets_ = _csv(subsets) if subsets is not None else cfg.subsets
    max_steps = max_steps if max_steps is not None else q.get("max_steps", cfg.max_steps)
    eval_limit = eval_limit if eval_limit is not None else q.get("eval_limit", cfg.eval_limit)
    jobs = max(1, jobs or cfg.jobs)
    out = Path(out or cfg.out or Path(wf.run_dir) / ("reproduce_quick" if quick else "reproduce"))
    try:
        runs, derived = make_plan(workflow, wf, seeds_, presets_, subsets_, out)
    except (WorkflowError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    budget = budget_of(wf, max_steps, eval_limit)
    command = "alignkd " + shlex.join(["reproduce", "--workflow", str(workflow), "--seeds", ",".join(map(str, seeds_)),
                                       "--presets", ",".join(presets_), "--subsets", ",".join(subsets_), "--out", str(out),
                                       "--max-steps", str(max_steps), "--eval-limit", str(eval_limit), "--jobs", str(jobs)])
    todo = [r for r in runs if not r.summary.is_file()]
    _announce(wf, runs, todo, len(seeds_), max_steps, jobs, command, out, workflow, derived)
    if dry_run:
        for r in runs:
            typer.echo(f"{r.name} ({'finished' if r.summary.is_file() else 'to run'}):\n"
                       f"  alignkd {shlex.join(r.train_args(max_steps))}\n  alignkd {shlex.join(r.eval_args(eval_limit))}")
        return
    try:
        check_finished(runs, budget)
    except BudgetMismatch as exc:
        typer.secho(f"reproduce: {out}: {exc}", fg="red", err=True)
        raise typer.Exit(code=2) from None

    t_start = time.perf_counter()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": command, "workflow": str(workflow),
            "derived_workflow": str(derived) if derived else None, "seeds": seeds_, "presets": presets_,
            "subsets": subsets_, "budget": budget, "jobs": jobs, "git": _git_state(),
            "ablation_subset": cfg.ablation_subset, "prerequisites": prerequisites(wf, workflow, todo, derived, out)}
    meta["samples"] = _subset_sizes(wf, list(dict.fromkeys(r.subset for r in runs)))
    report = lambda: write_report(out, runs, meta, time.perf_counter() - t_start)  # noqa: E731
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # `kill <pid>` stops the runs like Ctrl-C does
    try:
        failed = run_all(todo, len(runs), jobs, max_steps, eval_limit, budget, report)
    except KeyboardInterrupt:
        report()
        typer.secho(f"reproduce: interrupted; finished runs are kept in {out}: rerun the same command to continue",
                    fg="yellow", err=True)
        raise typer.Exit(code=130) from None
    typer.echo(report())
    typer.secho(f"reproduce: {out / 'reproduce.md'}, {out / 'reproduce.json'} "
                f"({_fmt(time.perf_counter() - t_start)})", fg="green", err=True)
    if failed:
        typer.secho(f"reproduce: {len(failed)} run(s) failed: " + ", ".join(f["run"] for f in failed)
                    + "; rerun the same command to retry them", fg="red", err=True)
        raise typer.Exit(code=1)


def _announce(wf, runs: list[Run], todo: list[Run], n_seeds: int, max_steps: int, jobs: int, command: str,
              out: Path, workflow: Path, derived: Path | None) -> None:
    steps = f"{max_steps} optimiser steps a stage" if max_steps > 0 else \
        f"the train section's budget (epochs {wf.train.pretrain.epochs:g} / {wf.train.finetune.epochs:g})"
    typer.echo(f"reproduce: {len(runs)} runs ({len(runs) // n_seeds} (subset, preset) pairs × {n_seeds} seeds), "
               f"{len(runs) - len(todo)} finished already, {len(todo)} to run, {jobs} at a time; {steps}\n"
               f"  {command}\n  output: {out}", err=True)
    if derived:
        typer.echo(f"  presets {', '.join(dict.fromkeys(r.preset for r in runs if r.workflow == str(derived)))} read "
                   f"{derived} (attention maps {workflow}'s cache lacks; cache in {out / 'cache'})", err=True)


def prerequisites(wf, workflow: Path, todo: list[Run], derived: Path | None, out: Path) -> list[dict]:
    """World → manifest → toy teacher (as `alignkd demo`), then every cache the runs to do read
    (each a no-op when already there). Returns the steps run, or with nothing to do, those of
    the invocation that ran them."""
    log = out / "prerequisites.json"
    if not todo:
        return json.loads(log.read_text()) if log.is_file() else []
    run = _Runner(log, prog="reproduce")
    prepare_teacher(run, wf, str(workflow))
    for w, s in dict.fromkeys((r.workflow, r.subset) for r in todo if r.preset != "sft"):
        run(f"teacher dump on Ray ({s} subset{', Table 4 maps' if w == str(derived) else ''})",
            ["teacher-dump", "--workflow", w, "--subset", s, "--no-progress"])
    return run.steps


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _subset_sizes(wf, subsets: list[str]) -> dict[str, int]:
    """Samples per subset in the manifest (both stages), for Table 1's #samples column."""
    from pipeline.data.contract import read_manifest

    if not Path(wf.data.manifest).is_file():
        return {}
    t = read_manifest(wf.data.manifest, [f"in_{s}" for s in dict.fromkeys(subsets)])
    return {s: int(sum(t.column(f"in_{s}").to_pylist())) for s in dict.fromkeys(subsets)}


def _git_state() -> str:
    """HEAD of the repository this code runs from, '+dirty' with uncommitted changes ('' if no git)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return ""
