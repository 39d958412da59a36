"""Session fixtures: one tiny toy world + manifest, one local Ray cluster (num_cpus=2), one
uninterrupted reference dump that the other tests compare against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.teacher_dump.dumplib import workflow


@dataclass
class World:
    root: Path  # tmp dir holding workflows, manifest and caches
    world: Path  # the generated toy world (images, tokenizer, teacher_init)
    wf: Path  # the base workflow (cache under root/base/cache)


@pytest.fixture(scope="session")
def dump_world(tmp_path_factory) -> World:
    from pipeline.data.manifest import build_manifest
    from pipeline.workflow import load_workflow
    from toy_world.world import build_world

    root = tmp_path_factory.mktemp("teacher_dump")
    wf_path = workflow(root, "base", root / "world")
    wf = load_workflow(wf_path)
    build_world(wf)
    build_manifest(wf, progress=False)
    return World(root=root, world=root / "world", wf=wf_path)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster shared by the in-process dumps (run_units then leaves it up)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@dataclass
class Reference:
    job: object  # teacher_dump.validate.DumpJob
    plan: object  # teacher_dump.plan.Plan
    report: object  # teacher_dump.run.DumpReport
    store: Path


@pytest.fixture(scope="session")
def reference(dump_world, ray_local) -> Reference:
    """The uninterrupted dump of the base workflow's short subset."""
    from pipeline.workflow import load_workflow
    from teacher_dump.run import dump, plan_job
    from teacher_dump.validate import check_inputs

    job = check_inputs(load_workflow(dump_world.wf), "short")
    rep = dump(job, progress=False)
    return Reference(job=job, plan=plan_job(job), report=rep, store=job.store_path)
