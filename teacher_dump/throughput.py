"""Dump throughput vs the teacher alone: is the teacher the only bottleneck?

    .venv/bin/python -m teacher_dump.throughput --workflow workflows/toy.yaml --subset short \
        --max-samples 256 --workers 1 2

Measures, on the same units (the first `--max-samples` of the plan, same batches):
  forward        teacher forward_align only (inputs prepared beforehand), one process, the
                 actor's thread count: the ceiling
  forward+reduce the same plus the on-device reductions and the host copy (no writing)
  worker, no Ray one TeacherWorker in this process, fed 2 units at a time like an actor:
                 prefetch + compute + writer thread + commits into a scratch store
  dump N         the real dump with N Ray actors into a scratch store: the unit loop's wall time
                 (teachers already loaded; Ray start and model load reported apart)
If writing overlaps compute as designed, `dump 1` runs at ≈ forward+reduce and `dump N` scales
with the cores/GPUs the actors get.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from teacher_dump.actor import TeacherWorker, WorkerSpec, reduce_spec
from teacher_dump.batches import prepare_batch
from teacher_dump.plan import Plan
from teacher_dump.reduce import reduce_batch
from teacher_dump.run import UNITS_IN_FLIGHT, plan_job, ray_session, run_units
from teacher_dump.validate import DumpJob, check_inputs


def _first(plan: Plan, max_samples: int) -> Plan:
    units, n = [], 0
    for u in plan.units:
        if n >= max_samples:
            break
        units.append(u)
        n += len(u)
    return dataclasses.replace(plan, units=units, n_samples=n)


def teacher_alone(job: DumpJob, plan: Plan) -> dict[str, float]:
    """samples/s of forward_align alone and with the reductions, in this process."""
    from pipeline.models import CaptureSpec, MobileVLM

    torch.set_num_threads(max(1, int(job.num_cpus)))
    model = MobileVLM.from_pretrained(job.teacher_dir, dtype=job.dtype).eval()
    spec = CaptureSpec(layers=job.capture_layers, blocks=job.capture_blocks)
    red = reduce_spec(job.provenance)
    batches = []
    for u in map(plan.materialize, plan.units):
        emitted: set[str] = set()
        for i in range(0, len(u), job.batch_size):
            take = list(range(i, min(i + job.batch_size, len(u))))
            batches.append(prepare_batch(u.rows, take, set(u.owned_images), emitted, model.config, model.image_size,
                                         model.num_vision_tokens))
    out = {}
    for name, reduce in (("warm-up", True), ("forward", False), ("forward+reduce", True)):
        t = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                if not len(b):
                    continue
                al = model.forward_align(input_ids=b.input_ids, images=b.images, attention_mask=b.attention_mask, spec=spec)
                if reduce:
                    reduce_batch(al, b.index, b.meta, red)
        out[name] = plan.n_samples / (time.perf_counter() - t)
    del out["warm-up"]  # first pass: allocator and kernel warm-up, like an actor's first unit
    return out


def worker_alone(job: DumpJob, plan: Plan, scratch: Path) -> float:
    """samples/s of one TeacherWorker in this process (no Ray), fed like an actor (2 units in
    flight): compute + prefetch + writer thread + commits. Its first unit is the warm-up."""
    store = scratch / "inprocess.zarr"
    spec = WorkerSpec(teacher_dir=str(job.teacher_dir), store_path=str(store),
                      failures_dir=str(store.with_name(store.name + ".failures")), provenance=job.provenance,
                      dtype=job.dtype, threads=max(1, int(job.num_cpus)), batch_size=job.batch_size,
                      capture_layers=job.capture_layers, capture_blocks=job.capture_blocks)
    w = TeacherWorker(spec)
    units = [plan.materialize(u) for u in plan.units]
    w.run_unit(units[0])
    t = time.perf_counter()
    with ThreadPoolExecutor(UNITS_IN_FLIGHT) as pool:
        list(pool.map(w.run_unit, units[1:]))
    return sum(len(u) for u in units[1:]) / (time.perf_counter() - t)


def dump_with(job: DumpJob, plan: Plan, workers: int, scratch: Path) -> dict[str, float]:
    store = scratch / f"w{workers}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(store.with_name(store.name + ".failures"), ignore_errors=True)
    j = dataclasses.replace(job, workers=workers, store_path=store, failures_dir=store.with_name(store.name + ".failures"),
                            resume=False)
    rep = run_units(j, plan, progress=False, log=lambda m: None)
    return {"samples_per_s": plan.n_samples / rep.seconds, "loop_s": rep.seconds, "startup_s": rep.startup_s}


def main(argv: list[str] | None = None) -> dict:
    from pipeline.workflow import load_workflow

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workflow", default="workflows/toy.yaml")
    ap.add_argument("--subset", default="short")
    ap.add_argument("--max-samples", type=int, default=256)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--scratch", default=None, help="scratch dir for the stores (default: a temp dir, removed)")
    a = ap.parse_args(argv)
    job = check_inputs(load_workflow(a.workflow), a.subset)
    plan = _first(plan_job(job), a.max_samples)
    res: dict = {"samples": plan.n_samples, "units": len(plan.units), "batch_size": job.batch_size,
                 "dtype": job.dtype, "threads_per_actor": max(1, int(job.num_cpus)), "cpus": os.cpu_count(),
                 "loadavg_before": os.getloadavg()[0]}
    res.update(teacher_alone(job, plan))
    scratch = Path(a.scratch or tempfile.mkdtemp(prefix="alignkd-throughput-"))
    try:
        res["worker, no Ray"] = worker_alone(job, plan, scratch)
        with ray_session(None, num_cpus=max(a.workers) * max(1, int(job.num_cpus))):
            for w in a.workers:
                res[f"dump {w}"] = dump_with(job, plan, w, scratch)
    finally:
        if a.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    res["loadavg_after"] = os.getloadavg()[0]
    print(json.dumps(res, indent=1))
    print(f"\n| {plan.n_samples} samples, batch {job.batch_size} | samples/s |\n|---|---|")
    for k in ("forward", "forward+reduce"):
        print(f"| teacher {k} (1 process, {res['threads_per_actor']} thread) | {res[k]:.1f} |")
    print(f"| one TeacherWorker in process, writing (no Ray) | {res['worker, no Ray']:.1f} |")
    for w in a.workers:
        d = res[f"dump {w}"]
        print(f"| dump, {w} actor(s) (loop {d['loop_s']:.1f} s; Ray+teacher start {d['startup_s']:.1f} s) | {d['samples_per_s']:.1f} |")
    return res


if __name__ == "__main__":
    main()
