"""`alignkd reproduce`'s runner: each run's train + eval commands as child process groups, `jobs`
at a time, with progress lines and a clean stop on Ctrl-C / SIGTERM (whole trees, no orphans)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import typer

from alignkd.demo_cmd import alignkd_argv
from alignkd.reproduce_plan import Run
from alignkd.reproduce_report import write_atomic

HEARTBEAT_S = 60.0  # a progress line at least this often while runs are going


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
            p = subprocess.Popen(alignkd_argv() + args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
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
    say = lambda msg: typer.echo(f"[reproduce {_fmt(time.perf_counter() - t0)}] {msg}", err=True)
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


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
