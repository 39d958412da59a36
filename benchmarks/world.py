"""The small toy world the dump and data-path benchmarks run on: `workflows/toy.yaml` with fewer
images and records, built by the real generator (`toy_world.world.build_world`, idempotent:
an intact world under `work` is reused) and the real manifest builder.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pipeline.workflow import Workflow, load_workflow, with_overrides

REPO = Path(__file__).resolve().parents[1]
# (n_images, n_pretrain, n_finetune): full ≈ 230 samples in the short subset, quick ≈ 22
SIZES = {"quick": (12, 8, 16), "full": (96, 96, 160)}


def bench_workflow(work: Path, quick: bool) -> Workflow:
    """toy.yaml re-rooted under `work` (world, manifest, caches), sized for the benchmark."""
    wf = load_workflow(REPO / "workflows" / "toy.yaml")
    kind = "quick" if quick else "full"
    root = Path(work).resolve() / kind
    w = root / "world"
    n_images, n_pretrain, n_finetune = SIZES[kind]
    def moved(ds):  # a dataset's files, under the re-rooted world
        return replace(ds, json=str(w / "data" / Path(ds.json).name), image_root=str(w / "images"))

    return with_overrides(wf, {
        "run_dir": str(root), "world.dir": str(w), "world.n_images": n_images, "world.n_pretrain": n_pretrain,
        "world.n_finetune": n_finetune, "world.n_eval_images": 2, "world.n_eval": 2,
        "world.tower_steps": 0,  # cost benchmarks: a random tower costs the same per step
        "data.datasets": [moved(d) for d in wf.data.datasets],
        "data.eval": moved(wf.data.eval) if wf.data.eval is not None else None,
        "data.tokenizer": str(w / "tokenizer"),
        "data.manifest": str(root / "manifest.parquet"), "data.rejects": str(root / "manifest.rejects.jsonl"),
        "data.num_workers": 0,  # tokenising in-process: the world is small
        "models.teacher": str(w / "teacher_init"), "models.student": str(w / "student_init"),
        "cache.dir": str(root / "cache"),
        "dump.workers": 1, "dump.batch_size": 8, "dump.unit_size": 16 if quick else 32,
        "source": f"{REPO / 'workflows' / 'toy.yaml'} (re-rooted under {root} by benchmarks.world)",
    })
    return wf


def build(wf: Workflow, log=print) -> Workflow:
    """Generate the world (unless already there) and (re)build the manifest."""
    from pipeline.data.manifest import build_manifest
    from toy_world.world import build_world

    meta = build_world(wf)
    log(f"[world] {wf.world.dir}: {'reused' if meta.get('up_to_date') else 'generated'}")
    build_manifest(wf, command="benchmarks", progress=False)
    return wf


def with_cache_dir(wf: Workflow, name: str) -> Workflow:
    """A copy of `wf` whose caches live in `<run_dir>/<name>` (one store per dump run)."""
    return with_overrides(wf, {"cache.dir": str(Path(wf.run_dir) / name)})
