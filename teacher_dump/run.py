"""The phase-1 recipe: validate → plan → run (Ray actors) → finalize.

    job  = check_inputs(wf, subset)            # everything checked before Ray starts
    plan = make_plan(rows, subset, unit_size)  # deterministic units; complete ones are skipped
    run_units(job, plan)                       # actors compute + write; retries; progress bar
    finalize(job, plan)                        # index + coverage vs manifest minus recorded failures

Resume is the same command again: complete units (committed atomically by cache_schema) are
skipped, partial ones are redone from scratch, so a kill at any point leaves no duplicates or gaps.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from tqdm import tqdm

from cache_schema import CacheStore, FinalizeReport
from pipeline.preflight import format_counts, human_bytes, manifest_counts
from teacher_dump.actor import TeacherWorker, WorkerSpec, read_failures
from teacher_dump.lock import dump_lock
from teacher_dump.plan import Plan, Unit, make_plan, plan_digest, projected_bytes
from teacher_dump.teacher_weights import create_or_open_store, teacher_first_layer, teacher_projector  # noqa: F401
from teacher_dump.validate import NOT_HASHED, DumpInputError, DumpJob

UNITS_IN_FLIGHT = 2  # per actor: one computing, one committing (the actor's max_concurrency)
PLAN_FILE = "plan.json"


class DumpError(RuntimeError):
    """The dump could not finish (a unit kept failing); re-running resumes it."""


@dataclass
class DumpReport:
    n_units: int
    n_samples: int
    units_run: int = 0
    units_skipped: int = 0  # complete before this run
    failures: dict[str, str] = field(default_factory=dict)  # sample_id -> reason (all runs)
    retries: int = 0
    startup_s: float = 0.0  # actors created and teachers loaded
    seconds: float = 0.0  # wall time of the unit loop (teachers ready → last unit committed)
    finalize: FinalizeReport | None = None


# ---- plan ------------------------------------------------------------------------------------
def plan_job(job: DumpJob) -> Plan:
    """The units, checked against the ones an earlier run of this store was cut into."""
    plan = make_plan(job.rows.table, job.subset, job.unit_size)
    state = job.failures_dir / PLAN_FILE
    want = {"unit_size": job.unit_size, "n_units": len(plan.units), "plan_digest": plan_digest(plan)}
    if job.resume and state.is_file():
        got = json.loads(state.read_text())
        if got != want:
            raise DumpInputError(
                f"{job.store_path} was dumped as {got['n_units']} units of {got['unit_size']} (plan {got['plan_digest']}); "
                f"this run would cut {want['n_units']} units of {want['unit_size']} (plan {want['plan_digest']}): "
                f"set dump.unit_size back to {got['unit_size']}, or start a new cache"
            )
    return plan


def describe(job: DumpJob, plan: Plan, complete: int) -> str:
    """The --dry-run summary: the teacher (from its config), the tokenizer check, the manifest's
    samples per stage and subset, the units and actors, the targets and the projected size."""
    size = projected_bytes(plan, job.provenance)
    p = job.provenance
    counts = manifest_counts(job.wf.data.manifest, job.wf.data.subsets)
    teacher = job.teacher.summary() if job.teacher is not None else "(config not read)"
    lines = [
        f"teacher-dump plan: subset {job.subset!r} of {job.wf.data.manifest} -> {job.store_path}",
        f"  teacher {job.teacher.label if job.teacher else 'models.teacher'} = {job.teacher_dir}: {teacher}",
        f"  tokenizer: {job.vocab}",
        f"  manifest samples per stage and subset: {format_counts(counts)}",
        f"  samples {plan.n_samples}   unique images {plan.n_images}   embedded tokens {plan.n_tokens}",
        f"  units {len(plan.units)} of ≤{job.unit_size} samples ({complete} complete, {len(plan.units) - complete} to run)",
        f"  actors {job.workers} × ({job.num_cpus:g} CPU, {job.num_gpus:g} GPU), batch {job.batch_size}, dtype {job.dtype}",
        f"  targets: attn {', '.join(p.attn_blocks)} [{p.encoding.attn}], focus k={p.focus_k}, "
        f"top-{p.logits_topk} logprobs [{p.encoding.logprobs}], projector tokens "
        + (f"[{p.encoding.vision}]" if p.projector_tokens == "stored" else
           f"recomputed by the student (teacher projector kept once; tower {p.vision_tower_fingerprint})")
        + ("; attention recomputed by the student (teacher embedding, layer-0 norm and q/k kept once)"
           if p.attention == "recompute" else ""),
        "  projected size before compression: " + ", ".join(f"{k} {human_bytes(v)}" for k, v in size.items()),
    ]
    lines += [f"  note: {n}" for n in job.notes]
    return "\n".join(lines)


# ---- ray ---------------------------------------------------------------------------------------
@contextmanager
def ray_session(address: str | None, num_cpus: int) -> Iterator[object]:
    """Connect to `address`, or start a local Ray sized for the actors; shut down only what we
    started (a caller that already initialised Ray, e.g. a test or notebook, keeps its cluster)."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    # ignore_reinit_error stays False: we checked is_initialized, so a second init is a real bug
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    else:  # "local": a fresh instance even if RAY_ADDRESS or a `ray start` cluster is around
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    try:
        yield ray
    finally:
        ray.shutdown()


class _Actors:
    """The actor slots; a dead actor is replaced (generation counter) so its units can be retried."""

    def __init__(self, ray, job: DumpJob, n: int):
        self.ray = ray
        self.spec = WorkerSpec(
            teacher_dir=str(job.teacher_dir), store_path=str(job.store_path), failures_dir=str(job.failures_dir),
            provenance=job.provenance, dtype=job.dtype, device="cuda" if job.num_gpus > 0 else "cpu",
            threads=max(1, math.floor(job.num_cpus)), batch_size=job.batch_size,
            capture_layers=job.capture_layers, capture_blocks=job.capture_blocks,
        )
        self.cls = ray.remote(TeacherWorker).options(
            num_cpus=job.num_cpus, num_gpus=job.num_gpus, max_concurrency=UNITS_IN_FLIGHT,
            max_restarts=0, max_task_retries=0,  # retries are ours: per unit, counted, with a reason
        )
        self.handles = [self.cls.remote(self.spec) for _ in range(n)]
        self.gen = [0] * n
        try:  # fail fast, with the reason, on a teacher that cannot load (path, OOM, CUDA)
            ray.get([h.ready.remote() for h in self.handles])
        except Exception as exc:
            for h in self.handles:
                ray.kill(h, no_restart=True)
            raise DumpError(f"the teacher actors could not start ({job.teacher_dir}): {exc}") from exc

    def replace(self, slot: int) -> None:
        self.ray.kill(self.handles[slot], no_restart=True)
        self.handles[slot] = self.cls.remote(self.spec)
        self.gen[slot] += 1


# ---- run ---------------------------------------------------------------------------------------
def open_store(job: DumpJob) -> CacheStore:
    """Create the job's store (with the teacher weights it keeps once) or open it to resume."""
    return create_or_open_store(job.store_path, job.provenance, job.teacher_dir)


def run_units(job: DumpJob, plan: Plan, address: str | None = None, progress: bool = True,
              log: Callable[[str], None] = print, on_unit: Callable[[dict], None] | None = None) -> DumpReport:
    """Run every incomplete unit on Ray actors; returns when all are committed (or raises DumpError).

    on_unit(result) is called in the driver after each committed unit (unit_id, n, failures,
    compute_s, wall_s, pid of the actor): progress hooks, benchmarks, fault-injection tests.
    """
    store = open_store(job)
    gone = store.remove_leftovers()  # of killed earlier runs (we hold the dump lock: none is live here)
    if gone:
        log(f"removed {len(gone)} leftover(s) of an interrupted earlier run: "
            + ", ".join(str(p.relative_to(job.store_path)) for p in gone[:3]) + (", …" if len(gone) > 3 else ""))
    job.failures_dir.mkdir(parents=True, exist_ok=True)
    state = job.failures_dir / PLAN_FILE
    if not state.is_file():
        state.write_text(json.dumps({"unit_size": job.unit_size, "n_units": len(plan.units), "plan_digest": plan_digest(plan)}))
    todo = [u for u in plan.units if not store.is_unit_complete(u.unit_id)]
    rep = DumpReport(n_units=len(plan.units), n_samples=plan.n_samples, units_skipped=len(plan.units) - len(todo))
    if rep.units_skipped:
        log(f"resuming {job.store_path}: {rep.units_skipped} of {len(plan.units)} units already complete")
    if not todo:
        return rep
    n = min(job.workers, len(todo))
    with ray_session(address, num_cpus=max(1, math.ceil(n * job.num_cpus))) as ray:
        log(f"starting {n} teacher actor(s) ({job.num_cpus:g} CPU, {job.num_gpus:g} GPU each) for {len(todo)} unit(s)")
        t0 = time.perf_counter()
        actors = _Actors(ray, job, n)  # teachers loaded; the bar's rate then measures the dump alone
        t1 = time.perf_counter()
        rep.startup_s = t1 - t0
        bar = tqdm(total=plan.n_samples, initial=plan.n_samples - sum(len(u) for u in todo), unit="sample",
                   desc=f"teacher-dump {job.subset}", disable=not progress, dynamic_ncols=True, smoothing=0.1)

        def say(msg: str) -> None:  # a log line above the bar, not through it
            bar.clear()
            log(msg)
            bar.refresh()

        try:
            _drive(ray, actors, plan, todo, job.max_retries, bar, rep, say, on_unit)
        finally:
            bar.close()
            for h in actors.handles:
                ray.kill(h, no_restart=True)
        rep.seconds = time.perf_counter() - t1
    return rep


def _drive(ray, actors: _Actors, plan: Plan, todo: list[Unit], max_retries: int, bar: tqdm, rep: DumpReport, log,
           on_unit: Callable[[dict], None] | None) -> None:
    from ray.exceptions import RayActorError, RayTaskError

    pending: deque[Unit] = deque(todo)
    inflight: dict = {}  # ObjectRef -> (unit, slot, generation)
    attempts: dict[str, int] = {}
    n_failed = 0

    def load(slot: int) -> int:
        return sum(1 for _, s, g in inflight.values() if s == slot and g == actors.gen[slot])

    while pending or inflight:
        for slot in range(len(actors.handles)):
            while pending and load(slot) < UNITS_IN_FLIGHT:
                u = pending.popleft()
                inflight[actors.handles[slot].run_unit.remote(plan.materialize(u))] = (u, slot, actors.gen[slot])
        (ref,), _ = ray.wait(list(inflight), num_returns=1)
        u, slot, g = inflight.pop(ref)
        try:
            res = ray.get(ref)
        except (RayActorError, RayTaskError) as exc:
            if isinstance(exc, RayActorError) and g == actors.gen[slot]:
                actors.replace(slot)  # the actor died (killed, OOM, node lost): a fresh teacher
            attempts[u.unit_id] = attempts.get(u.unit_id, 0) + 1
            rep.retries += 1
            why = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
            if attempts[u.unit_id] > max_retries:
                raise DumpError(
                    f"unit {u.unit_id} ({len(u)} samples, first {u.sample_ids[0]!r}) failed {attempts[u.unit_id]} "
                    f"times (dump.max_retries={max_retries}); last error: {why}\nComplete units are kept: "
                    f"fix the cause and re-run the same command to resume."
                ) from exc
            log(f"unit {u.unit_id}: attempt {attempts[u.unit_id]} failed ({type(exc).__name__}: {why}); retrying")
            pending.appendleft(u)
            continue
        rep.units_run += 1
        n_failed += len(res["failures"])
        bar.set_postfix(units=f"{rep.units_skipped + rep.units_run}/{rep.n_units}", failed=n_failed, refresh=False)
        bar.update(res["n"])
        if on_unit is not None:
            on_unit(res)


# ---- finalize ----------------------------------------------------------------------------------
def finalize(job: DumpJob, plan: Plan, rep: DumpReport, log: Callable[[str], None] = print) -> DumpReport:
    """Coverage check against the subset minus recorded failures, the sample index, a summary."""
    failures: dict[str, str] = {}
    for u in plan.units:
        for f in read_failures(job.failures_dir, u.unit_id):
            failures[f["sample_id"]] = f["reason"]
    expected = [s for s in plan.sample_ids() if s not in failures]
    store = CacheStore.open(job.store_path)
    rep.finalize = store.finalize(expected)  # raises CoverageError naming missing/duplicate ids
    rep.failures = failures
    merged = job.failures_dir / "failures.jsonl"
    tmp = merged.with_name(f".{merged.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps({"sample_id": s, "reason": r}) + "\n" for s, r in sorted(failures.items())))
    os.replace(tmp, merged)
    fr = rep.finalize
    log(f"finalized {job.store_path}: {fr.n_samples} samples, {fr.n_images} images in {fr.n_units} units; "
        f"coverage = subset {plan.n_samples} − {len(failures)} recorded failure(s): complete")
    if failures:
        log(f"  {len(failures)} sample(s) could not be cached (reasons in {merged}); e.g. "
            + "; ".join(f"{s}: {r}" for s, r in list(sorted(failures.items()))[:3]))
    if fr.unreferenced_images:
        log(f"  {len(fr.unreferenced_images)} stored image(s) are used by no cached sample (their samples failed)")
    return rep


def dump(job: DumpJob, address: str | None = None, dry_run: bool = False, progress: bool = True,
         log: Callable[[str], None] = print, on_unit: Callable[[dict], None] | None = None) -> DumpReport | None:
    """The whole recipe after validation (the CLI and the throughput script call this)."""
    plan = plan_job(job)
    if dry_run:
        store = CacheStore.open(job.store_path) if job.resume else None
        complete = sum(1 for u in plan.units if store.is_unit_complete(u.unit_id)) if store else 0
        log(describe(job, plan, complete))
        return None
    if job.provenance.teacher_fingerprint == NOT_HASHED:  # a store must never carry a dry run's provenance
        raise DumpInputError("this job was checked for a dry run (teacher weights not hashed): "
                             "check_inputs(..., dry_run=False) before dumping")
    with dump_lock(job.store_path):  # a second dump of this store refuses instead of racing it
        rep = run_units(job, plan, address=address, progress=progress, log=log, on_unit=on_unit)
        return finalize(job, plan, rep, log=log)
