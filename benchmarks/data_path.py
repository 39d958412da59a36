"""Data path: can the cached loader feed the student? On the dumped toy store:

  reader          CacheReader.iter_samples + image_tokens, one process (the store alone)
  loader          student_train.data.build_train_loader in cached mode, with the DataLoader
                  workers the training uses (train.num_workers): manifest ⋈ cache, image decode
                  and preprocessing, collate — samples/s after the first batch
  student         what the toy student consumes in cached mode (Align-KD loss, same batches)
  fed training    the student trained straight from the loader: share of the time spent waiting
                  for the next batch (the loader's workers and the student share the CPU here)
and, since the toy store is tiny, the reader at the real teacher's shapes (one worker, synthetic
targets with the size table's generator, default encoding): what one DataLoader worker delivers
per second at 32 × 200 × 144 attention and 144 × 4096 vision tokens.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Clock, Flags, ratio, summary
from cache_schema import CacheReader, CacheStore, Encoding, Provenance, SampleTargets
from pipeline.workflow import Workflow
from student_train.data import build_train_loader, micro_steps_per_epoch
from student_train.losses import TeacherTargets, resolve_loss
from student_train.teacher_targets import from_cached

STAGE, SUBSET = "finetune", "short"


def _loader(wf: Workflow, reader: CacheReader, epochs: int):
    mb = getattr(wf.train, STAGE).micro_batch
    _, n = build_train_loader(wf, SUBSET, STAGE, "cached", 0, 1, mb, seed=0, reader=reader)
    end = epochs * micro_steps_per_epoch(n, 1, mb)
    return build_train_loader(wf, SUBSET, STAGE, "cached", 0, 1, mb, seed=0, end_step=end, reader=reader)[0]


def reader_rate(reader: CacheReader, needs: TeacherTargets, min_s: float = 1.0) -> dict:
    """samples/s of get → image_tokens → from_cached (what a loader worker does per sample, minus
    the image file), repeated over the store until `min_s` seconds have passed."""
    from student_train.data import stored_needs

    needs = stored_needs(needs, reader.provenance)  # what a loader worker reads of this store
    ids, n, t0 = reader.sample_ids, 0, time.perf_counter()
    while True:
        for s in reader.iter_samples(ids):
            from_cached(s, reader.image_tokens(s.image_hash) if (needs.vision_tokens and s.image_hash) else None, needs)
            n += 1
        if time.perf_counter() - t0 >= min_s:
            return {"samples_per_s": n / (time.perf_counter() - t0), "samples_read": n}


def loader_rate(wf: Workflow, reader: CacheReader, epochs: int) -> dict:
    t0 = time.perf_counter()
    it = iter(_loader(wf, reader, epochs))
    first = next(it)
    t1 = time.perf_counter()
    n = sum(len(b) for b in it)
    t2 = time.perf_counter()
    return {"first_batch_s": t1 - t0, "samples_per_s": n / (t2 - t1) if n else None, "samples": n + len(first),
            "num_workers": wf.train.num_workers, "prefetch_factor": wf.train.prefetch_factor,
            "micro_batch": getattr(wf.train, STAGE).micro_batch}


def student_rate(wf: Workflow, reader: CacheReader, epochs: int, max_steps: int) -> tuple[dict, dict]:
    """(consumption on prefetched batches, training fed by the loader) for the toy student."""
    from benchmarks.train_cost import ModeRun, train_module
    from pipeline.models import MobileVLM
    from pipeline.workflow import StageConfig
    from student_train.engine import build_optimizer, vision_tower_of

    student = MobileVLM.from_pretrained(wf.models.student)
    vision_tower_of(student).requires_grad_(False)
    prov = reader.provenance
    module = train_module(student, wf.train.loss.preset, prov.teacher_heads, prov.teacher_hidden_size, "cpu", reader=reader)
    run = ModeRun("cached", module, build_optimizer(module, StageConfig()), [])
    clock = Clock("cpu")
    batches = [b for _, b in zip(range(max_steps), _loader(wf, reader, epochs))]
    run.step(batches[0], clock, None)  # warm-up
    steps = [sum(run.step(b, clock, None).values()) for b in batches]
    consume = {"step_s": summary(steps), "samples_per_s": float(np.mean([len(b) for b in batches])) / summary(steps)["median"]}
    waits, t0 = [], time.perf_counter()
    it = iter(_loader(wf, reader, epochs))
    for i in range(max_steps + 1):
        tw = time.perf_counter()
        b = next(it, None)
        if b is None:
            break
        if i:  # the first batch includes the workers' start
            waits.append(time.perf_counter() - tw)
        else:
            t0 = time.perf_counter()
        run.step(b, clock, None)
    total = time.perf_counter() - t0
    return consume, {"steps": len(waits), "wait_s": sum(waits), "total_s": total,
                     "stall_fraction": sum(waits) / total if total else None}


def real_shape_rate(n_samples: int, min_s: float = 1.0, workdir: str | None = None) -> dict:
    """One worker's read rate at the real teacher's shapes (default encoding, synthetic targets)."""
    from cache_schema.sizes import Shapes, synth_attention, synth_vision

    sh, rng = Shapes(), np.random.default_rng(0)
    prov = Provenance(teacher_fingerprint="benchmark", teacher_config_fingerprint="benchmark",
                      tokenizer_fingerprint="benchmark", manifest_fingerprint="benchmark", templates=("v1",),
                      subset="bench", max_length=2048, num_vision_tokens=sh.n_vision, teacher_heads=sh.heads,
                      teacher_hidden_size=sh.hidden, vocab_size=sh.vocab, logits_topk=sh.topk, focus_k=sh.focus_k,
                      encoding=Encoding())
    needs = resolve_loss().teacher_targets()  # the default Align-KD loss: attention, focus, tokens, logits
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        store = CacheStore.create_or_open(Path(tmp) / "real.zarr", prov)
        with store.unit_writer("u0") as w:
            for i in range(n_samples):
                att, _ = synth_attention(rng, sh)
                lp = np.sort(-rng.exponential(3.0, size=(sh.n_resp, sh.topk)).astype(np.float32), axis=1)[:, ::-1]
                w.add_sample(SampleTargets(
                    sample_id=f"s{i}", token_hash="t", image_hash=f"img{i}", n_text=sh.n_text,
                    attn={("first", "tv"): att}, focus=np.arange(sh.focus_k, dtype=np.int64),
                    topk_ids=np.stack([rng.choice(sh.vocab, sh.topk, replace=False) for _ in range(sh.n_resp)]),
                    topk_logprobs=np.ascontiguousarray(lp), tail_logmass=np.full(sh.n_resp, -3.0, np.float32)))
                w.add_image(f"img{i}", synth_vision(rng, sh))
        store.finalize([f"s{i}" for i in range(n_samples)])
        out = reader_rate(CacheReader(store.path), needs, min_s)
    decoded = 4 * (sh.heads * sh.n_text * sh.n_vision + sh.n_vision * sh.hidden) + 12 * sh.n_resp * sh.topk
    return {**out, "shapes": sh.__dict__, "decoded_MB_per_sample": decoded / 1e6, "samples_in_store": n_samples,
            "note": "one image per sample; image file decode not included"}


def run(wf: Workflow, store: Path, quick: bool, flags: Flags, log=print) -> dict:
    reader = CacheReader(store)
    needs = resolve_loss(wf.train.loss).teacher_targets()
    epochs, max_steps = (1, 3) if quick else (2, 16)
    log(f"[data_path] reader / loader / student on {len(reader)} cached samples")
    res = {"store": str(store), "samples_in_store": len(reader), "loss_preset": wf.train.loss.preset,
           "reader": reader_rate(reader, needs, 0.5 if quick else 2.0),
           "loader": loader_rate(wf, reader, epochs)}
    res["student"], res["fed"] = student_rate(wf, reader, epochs, max_steps)
    log("[data_path] reader at the real teacher's shapes")
    res["real_shapes_reader"] = real_shape_rate(2 if quick else 6, 0.5 if quick else 1.5)
    res["ratios"] = {"loader_over_student": ratio(res["loader"]["samples_per_s"], res["student"]["samples_per_s"]),
                     "reader_over_student": ratio(res["reader"]["samples_per_s"], res["student"]["samples_per_s"])}
    res["notes"] = _explain(res, flags)
    return res


def _explain(res: dict, flags: Flags) -> list[str]:
    r, notes = res["ratios"]["loader_over_student"], []
    stall = res["fed"]["stall_fraction"]
    if r is not None and r < 1.5:
        why = (f"{res['loader']['num_workers']} loader worker decodes PNGs, preprocesses them and reads the store for "
               "a toy student whose whole step takes a few ms per sample; at real shapes a student step costs "
               "~100× more per sample while the per-sample read grows far less (see the real-shape reader row), "
               "and train.num_workers scales the loader")
        flags.add("data_path", "loader / student samples/s", r, "≥ 1.5 (headroom)", why)
        notes.append(f"**The loader delivers only {r:.2f}× what the toy student consumes.** {why}.")
    if stall is not None and stall > 0.05:
        why = ("the training loop waited for batches: its one DataLoader worker and the student compete for the same "
               "2 shared cores, so the worker falls behind whenever the student's step holds both")
        flags.add("data_path", "fed training: time waiting for data", stall, "≤ 0.05", why)
        notes.append(f"**Fed training spent {100 * stall:.0f}% of its time waiting for data.** {why}.")
    return notes
