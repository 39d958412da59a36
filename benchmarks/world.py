"""The small toy world the dump and data-path benchmarks run on: `workflows/toy.yaml` with fewer
images and records, built by the real generator (`toy_world.world.build_world`, idempotent:
an intact world under `work` is reused) and the real manifest builder.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.workflow import Workflow, load_workflow

REPO = Path(__file__).resolve().parents[1]
# (n_images, n_pretrain, n_finetune): full ≈ 230 samples in the short subset, quick ≈ 22
SIZES = {"quick": (12, 8, 16), "full": (96, 96, 160)}


def bench_workflow(work: Path, quick: bool) -> Workflow:
    """toy.yaml re-rooted under `work` (world, manifest, caches), sized for the benchmark."""
    wf = load_workflow(REPO / "workflows" / "toy.yaml")
    kind = "quick" if quick else "full"
    root = Path(work).resolve() / kind
    w = root / "world"
    wf.run_dir = str(root)
    wf.world.dir = str(w)
    wf.world.n_images, wf.world.n_pretrain, wf.world.n_finetune = SIZES[kind]
    wf.world.n_eval_images, wf.world.n_eval = 2, 2
    wf.world.tower_steps = 0  # cost benchmarks: a random tower costs the same per step
    for ds in [*wf.data.datasets, wf.data.eval]:
        ds.json = str(w / "data" / Path(ds.json).name)
        ds.image_root = str(w / "images")
    wf.data.tokenizer = str(w / "tokenizer")
    wf.data.manifest, wf.data.rejects = str(root / "manifest.parquet"), str(root / "manifest.rejects.jsonl")
    wf.data.num_workers = 0  # tokenising in-process: the world is small
    wf.models.teacher, wf.models.student = str(w / "teacher_init"), str(w / "student_init")
    wf.cache.dir = str(root / "cache")
    wf.dump.workers, wf.dump.batch_size, wf.dump.unit_size = 1, 8, 16 if quick else 32
    wf.source = f"{REPO / 'workflows' / 'toy.yaml'} (re-rooted under {root} by benchmarks.world)"
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
    import copy

    out = copy.deepcopy(wf)
    out.cache.dir = str(Path(wf.run_dir) / name)
    return out
