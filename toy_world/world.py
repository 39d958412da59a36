"""`build_world`: write a whole toy world to disk, reproducibly and atomically.

Layout of `<world>` (= `wf.world.dir`):
    world.json                 spec (seed, counts, limits, generator version), stats, sha256 of every file
    scenes.json                ground truth per image: background, texture, objects (shape, colour, size, cell, pixels)
    images/train_NNNNN.png     training images;  images/eval_NNNNN.png  held-out eval images
    data/pretrain.json         captions (template plain)
    data/finetune.json         QA: single-turn, multi-turn, long, text-only (template v1)
    data/eval.json             one-word QA on held-out images, with `task` and `answer`
    data/eval_captions.json    "describe the image" per held-out image (template v1): the image-use measure
    tokenizer/                 BPE tokenizer (AutoTokenizer-loadable)
    vision_tower/              toy CLIP vision config (each checkpoint carries a copy in its own vision_tower/)
    teacher_init/ student_init/  random MobileVLM-layout checkpoints (4×256×8 / 2×128×4) with identical
                               frozen CLIP weights and a copy of the tokenizer

Sizing (workflows/toy.yaml; `make demo` should take ~10 min on 2 CPU cores). Tuned on the
development world workflows/toy_dev.yaml (seed 1), measured on this project's 2-core machine:
* the vision tower is pre-trained on the world's own training scenes (`tower.py`, world.tower_steps
  300, ~80 CPU-s): its frozen patch features linearly encode colour (held-out read-out 1.00),
  object vs background (1.00), size (0.80), grid cell (1.00) and, weakly, shape (0.41: a 4 px
  patch inside a shape does not show its outline). With the earlier *random* frozen tower every toy
  model had to learn vision from scratch through random features and none read the image for QA
  within 400-750 steps; with this one a teacher reads it after 150 caption steps + 50 QA steps
  (`python -m benchmarks.grounding_onset`, dev world: forced answer accuracy 0.41 with its own
  image vs 0.26 with another, 0.47 vs 0.34 at 150 QA steps).
* 16 vision tokens (the projector pools the 16 x 16 CLIP patches to 4 x 4): with 64 a toy step cost
  ~2x as much; 16 tokens still resolve the 3 x 3 object grid (each object covers 1-4 tokens).
  `cache.focus_k` 2 keeps the paper's ratio (16 of 144).
* cost per optimiser step: teacher (4x256) ≈ 0.65 s on captions, ≈ 0.8-1.4 s on QA (Short/Long);
  student (2x128) ≈ 0.25 s; 2 DeepSpeed ranks roughly halve the wall time of either.
* the teacher is trained once per world (150 caption + 500 QA steps at lr 7e-4, ~3.9 min on 2 ranks),
  the students get two epochs of Short per stage (150 + 213 steps at 1e-3): on dev worlds 2 and 3
  the teacher answers 19-22 points better than an SFT student and drops 18-21 points with another
  image; the SFT student stays image-blind at that budget while the Align-KD student reads the image
  (with the 400-step teacher: 0.482 / 0.499 vs SFT 0.354 / 0.355; docs/results/distillation.md) —
  the gap Align-KD closes.
* 1,200 training images, 1,200 captions and 2,000 fine-tuning records (1,700 in Short): the
  students see Short twice per stage (150 + 213 steps); the Short dump is 2,900 samples (~1 min).
* 1,400 eval questions (200 per task type) on 500 held-out images, and one description per
  held-out image for image use: with 350 one model's accuracy had ±2.5 points of standard error;
  every comparison is now a paired bootstrap interval (`evaluation.paired`), which resolves ~2 points.
* task difficulty (see `tasks.py`): colour/shape/size of a named object need one object's
  features, but counting, position, binding (hard-negative "is there a red square?") and size
  comparison need the text to attend to the right vision tokens.
* the answer prior is flat by construction, so the image-blind ceiling stays far below what
  grounding reaches.
* images are reused (captions each image once, fine-tuning draws ≈ 2 records per image with
  replacement): some images have one sample, most several, so projector tokens are cached once
  per unique image.
* `long_fraction` of the fine-tuning records are fitted (by their number of turns) between the
  short and the long subset limit, so exactly that share is Long-only.
Generation: ~10 s of CPU plus ~80 s for the tower (one thread, deterministic); the world is ~25 MB.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from pipeline.workflow import Workflow
from toy_world import assets, stats
from toy_world.generate import (
    WorldError,
    WorldSpec,
    make_drafts,
    make_eval,
    make_eval_captions,
    make_pretrain,
    make_scenes,
    render_images,
    tokenizer_corpus,
)
from toy_world.presets import toy_vision_config
from toy_world.records import Draft, fit_turns, prefixes
from toy_world.tower import pretrain_tower

WORLD_JSON = "world.json"


def build_world(wf: Workflow, out: str | Path | None = None, force: bool = False,
                log: Callable[[str], None] = lambda s: None) -> dict:
    """Generate the world of `wf` into `out` (default `wf.world.dir`); return world.json's content
    (with `"up_to_date": True` added when an identical, intact world was already there).

    Idempotent: an intact world of the same spec is left as it is; a damaged one is rebuilt. A
    different world (or a non-world directory) is refused unless `force`.
    """
    spec = WorldSpec.from_workflow(wf)
    out = Path(out or wf.world.dir)
    state = existing_state(out, spec)
    if state == "intact":
        meta = json.loads((out / WORLD_JSON).read_text())
        return {**meta, "up_to_date": True}
    if state in ("different", "foreign") and not force:
        what = f"a different world ({spec_diff(out, spec)})" if state == "different" else "files that are not a toy world"
        raise WorldError(f"{out} holds {what}; rerun with --force to replace it (what was built from it, e.g. "
                         f"the manifest and the teacher, is then stale too), or choose another --out")
    stage = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        meta = _generate(spec, stage, log)
        _swap(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return meta


def existing_state(out: Path, spec: WorldSpec) -> str:
    """absent | intact (same spec, every file hash matches) | damaged (same spec) | different | foreign"""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return "absent"
    try:
        meta = json.loads((out / WORLD_JSON).read_text())
    except (OSError, ValueError):
        return "foreign"
    if meta.get("spec") != asdict(spec):
        return "different"
    for rel, digest in meta.get("files", {}).items():
        p = out / rel
        if not p.is_file() or _sha(p.read_bytes()) != digest:
            return "damaged"
    return "intact"


def spec_diff(out: Path, spec: WorldSpec) -> str:
    """'key: old -> new' for every spec field that differs from the world in `out`."""
    old = json.loads((out / WORLD_JSON).read_text()).get("spec", {})
    new = asdict(spec)
    return ", ".join(f"{k}: {old.get(k)} -> {v}" for k, v in new.items() if old.get(k) != v)


def _generate(spec: WorldSpec, d: Path, log_: Callable[[str], None]) -> dict:
    t0 = time.perf_counter()
    log = lambda s: log_(f"[{time.perf_counter() - t0:5.1f} s] {s}")
    train, held = make_scenes(spec)
    (d / "images").mkdir()
    for name, png in render_images(spec, train + held):
        (d / "images" / name).write_bytes(png)
    log(f"rendered {len(train)} training and {len(held)} held-out images")

    pretrain, drafts, evals = make_pretrain(spec, train), make_drafts(spec, train), make_eval(spec, held)
    tok = assets.build_tokenizer(tokenizer_corpus(pretrain, drafts, assets.V1_BOILERPLATE),
                                 spec.tokenizer_vocab, d / "tokenizer")
    log(f"trained the tokenizer ({len(tok)} tokens)")

    finetune = _fit_finetune(spec, drafts, tok)
    (d / "data").mkdir()
    sets = (("pretrain", pretrain), ("finetune", finetune), ("eval", evals), ("eval_captions", make_eval_captions(spec, held)))
    for name, recs in sets:
        (d / "data" / f"{name}.json").write_bytes(_json_bytes(recs))
    (d / "scenes.json").write_bytes(_json_bytes({s.image: s.to_json() for s in train + held}))
    tower, readout = None, {"steps": 0}  # world.tower_steps 0: a random tower (seeded by the teacher init)
    if spec.tower_steps:
        tower, readout = pretrain_tower(toy_vision_config(), train, held, d / "images", spec.seed, spec.tower_steps)
        readout["steps"] = spec.tower_steps
        log(f"pre-trained the vision tower ({readout['train_seconds']} s; held-out linear read-out: colour "
            f"{readout['colour']:.2f}, shape {readout['shape']:.2f}, size {readout['size']:.2f}, object {readout['object']:.2f})")
    dirs = assets.write_models(d, d / "tokenizer", len(tok), spec.seed, spec.projector_grid, tower)
    for k in ("teacher_init", "student_init"):  # the lengths above assumed this many
        if (n := assets.vision_tokens_of(dirs[k])) != spec.num_vision_tokens:
            raise WorldError(f"{k} emits {n} vision tokens but the workflow's models.num_vision_tokens is "
                             f"{spec.num_vision_tokens}: set models.num_vision_tokens: {n}")
    log("wrote the data JSON, the scenes and the teacher/student inits")

    st = stats.world_stats(spec, train, pretrain, finetune, evals, drafts, tok)
    st["tower_readout"] = {k: v for k, v in readout.items() if k != "train_seconds"}  # seconds vary: not in the hashed spec
    files = {str(p.relative_to(d)): _sha(p.read_bytes()) for p in sorted(d.rglob("*")) if p.is_file()}
    meta = {"spec": asdict(spec), "stats": st, "files": files}
    (d / WORLD_JSON).write_bytes(_json_bytes(meta))
    return meta


def _fit_finetune(spec: WorldSpec, drafts: list[Draft], tok: Any) -> list[dict]:
    """Fix each draft's number of turns for its band, measuring every prefix in one batch."""
    pre = [prefixes(dr) for dr in drafts]
    flat = [(c, "v1", dr.image is not None) for dr, cs in zip(drafts, pre) for c in cs]
    lens = assets.embedded_lengths(flat, tok, spec.num_vision_tokens)
    out, k0 = [], 0
    for dr, cs in zip(drafts, pre):
        out.append(dr.record(fit_turns(dr, lens[k0 : k0 + len(cs)], spec.short_limit, spec.long_limit)))
        k0 += len(cs)
    return out


def _swap(stage: Path, out: Path) -> None:
    """Replace `out` by `stage` with renames, so a reader never sees a half-written world."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    stage.rename(out)
    if old.is_dir():
        shutil.rmtree(old)
    elif old.exists():  # --force over a plain file
        old.unlink()


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()[:16]


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode()
