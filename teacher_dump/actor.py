"""The teacher worker: one teacher in inference mode, turning units of work into committed units.

Three things run at once inside a worker, so that the teacher is the only bottleneck:

    prefetch thread   reads/hashes/decodes the images of batch i+1      (batches.prepare_batch)
    compute (caller)  forward_align of batch i, reduced on the device   (reduce.reduce_batch)
    writer thread     encodes/compresses/writes batch i-1 and commits finished units

The writer is fed through a bounded queue (host memory stays at a few reduced batches). The
worker is run as a threaded Ray actor with max_concurrency=2: while unit n waits for its commit
outside the compute lock, unit n+1 already computes. Plain Python: tests and the throughput
script use it without Ray too.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from cache_schema import Provenance, SampleValidationError, UnitWriter
from teacher_dump.batches import Batch, Failure, load_image, prepare_batch
from teacher_dump.plan import Unit
from teacher_dump.reduce import ReduceSpec, reduce_batch
from teacher_dump.teacher_weights import create_or_open_store

QUEUE_DEPTH = 4  # reduced batches waiting for the writer (bounds host memory, absorbs I/O jitter)
_WIRE = {"f16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class WorkerSpec:
    teacher_dir: str
    store_path: str
    failures_dir: str
    provenance: Provenance
    dtype: str = "float32"  # teacher compute dtype
    device: str = "cpu"  # "cuda" when the actor holds a GPU
    threads: int = 1  # torch intra-op threads: the actor's CPU share
    batch_size: int = 8
    capture_layers: tuple[str, ...] = ("first",)
    capture_blocks: tuple[str, ...] = ("tv",)


def reduce_spec(prov: Provenance) -> ReduceSpec:
    enc = prov.encoding
    return ReduceSpec(
        # none when the student recomputes them; focus is computed either way
        attn_keys=prov.stored_attn_keys, focus_k=prov.focus_k, logits_topk=prov.logits_topk,
        wire_attn=torch.float16 if enc.attn == "f16" else torch.float32,
        wire_logprobs=torch.float16 if enc.logprobs == "f16" else torch.float32,
        wire_vision=_WIRE.get(enc.vision, torch.float32),
        vision_tokens=prov.projector_tokens == "stored",
    )


def write_failures(failures_dir: Path, unit_id: str, failures: list[Failure]) -> None:
    """Record a unit's failed samples (atomically), or clear a stale record when there are none."""
    path = Path(failures_dir) / f"{unit_id}.json"
    if not failures:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"unit_id": unit_id, "failures": [f.to_dict() for f in failures]}, indent=1))
    os.replace(tmp, path)


def read_failures(failures_dir: Path, unit_id: str) -> list[dict]:
    path = Path(failures_dir) / f"{unit_id}.json"
    return json.loads(path.read_text())["failures"] if path.is_file() else []


class TeacherWorker:
    def __init__(self, spec: WorkerSpec):
        from pipeline.models import CaptureSpec, MobileVLM

        torch.set_num_threads(max(1, spec.threads))
        self.spec = spec
        self.model = MobileVLM.from_pretrained(spec.teacher_dir, dtype=spec.dtype, device=spec.device).eval()
        self.capture = CaptureSpec(layers=spec.capture_layers, blocks=spec.capture_blocks)
        self.reduce = reduce_spec(spec.provenance)
        self.store = create_or_open_store(Path(spec.store_path), spec.provenance, Path(spec.teacher_dir))
        self.n_vision = self.model.num_vision_tokens
        self._compute = threading.Lock()  # one unit on the teacher at a time
        self._prefetch = ThreadPoolExecutor(1, thread_name_prefix="prefetch")
        self._q: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
        threading.Thread(target=self._write_loop, name="writer", daemon=True).start()

    def ready(self) -> dict:
        return {"pid": os.getpid(), "device": str(self.model.device), "threads": torch.get_num_threads()}

    # ---- the unit of work ------------------------------------------------------------------
    def run_unit(self, unit: Unit) -> dict:
        """Compute and commit one unit; returns its stats. Idempotent: a unit committed by an
        earlier attempt is reported, not redone."""
        t0 = time.perf_counter()
        assert unit.rows is not None, "send plan.materialize(unit)"
        if self.store.is_unit_complete(unit.unit_id):
            return self._result(unit, read_failures(self.spec.failures_dir, unit.unit_id), 0.0, t0, skipped=True)
        done: Future = Future()
        with self._compute:
            writer = self.store.unit_writer(unit.unit_id)
            try:
                failures, compute_s = self._compute_unit(unit, writer)
            except BaseException:
                self._q.put(("abort", writer, None, None))
                raise
            self._q.put(("commit", writer, failures, done))
        failures = done.result()  # the commit (or the writer's error); the next unit computes meanwhile
        return self._result(unit, failures, compute_s, t0)

    def _result(self, unit: Unit, failures: list, compute_s: float, t0: float, skipped: bool = False) -> dict:
        f = [x if isinstance(x, dict) else x.to_dict() for x in failures]
        return {"unit_id": unit.unit_id, "n": len(unit), "failures": f, "compute_s": compute_s,
                "wall_s": time.perf_counter() - t0, "skipped": skipped, "pid": os.getpid()}

    def _compute_unit(self, unit: Unit, writer: UnitWriter) -> tuple[list[Failure], float]:
        bs, n = self.spec.batch_size, len(unit)
        takes = [list(range(i, min(i + bs, n))) for i in range(0, n, bs)]  # rows are sorted by length
        owned, emitted = set(unit.owned_images), set()
        cfg, size = self.model.config, self.model.image_size

        def prepare(take: list[int]) -> Batch:  # on the prefetch thread, in batch order
            return prepare_batch(unit.rows, take, owned, emitted, cfg, size, self.n_vision)

        nxt = self._prefetch.submit(prepare, takes[0])
        failures: list[Failure] = []
        compute_s = 0.0
        for j in range(len(takes)):
            batch: Batch = nxt.result()
            if j + 1 < len(takes):
                nxt = self._prefetch.submit(prepare, takes[j + 1])
            failures += batch.failures
            if len(batch):
                t = time.perf_counter()
                samples, images = self._forward(unit, batch)
                compute_s += time.perf_counter() - t
                self._q.put(("batch", writer, (samples, images), None))  # blocks when the writer lags
        for h in sorted(owned - emitted):  # every sample of this unit using h failed: store h anyway
            img = self._encode_orphan(unit, h)
            if img is not None:
                self._q.put(("batch", writer, ([], [(h, img)]), None))
        return failures, compute_s

    @torch.inference_mode()
    def _forward(self, unit: Unit, batch: Batch):
        dev = self.model.device
        images = None if batch.images is None else batch.images.to(dev, self.model.dtype, non_blocking=True)
        # labels=None: forward_align would otherwise compute a CE over the full logits we never
        # need; R comes from the same pipeline.positions.sample_index on the real labels.
        al = self.model.forward_align(input_ids=batch.input_ids.to(dev), images=images,
                                      attention_mask=batch.attention_mask.to(dev), labels=None, spec=self.capture)
        for mine, got in zip(batch.index, al.index):  # same positions, ours also carries R
            assert (mine.length, mine.v_start, mine.n_vision) == (got.length, got.v_start, got.n_vision), unit.unit_id
        return reduce_batch(al, batch.index, batch.meta, self.reduce)

    @torch.inference_mode()
    def _encode_orphan(self, unit: Unit, image_hash: str):
        """Projector tokens of an owned image none of whose samples here could be computed (they
        failed for token reasons, say): samples of later units still reference it."""
        rows = unit.rows
        for path, h in zip(rows["image_path"], rows["image_hash"]):
            if h == image_hash:
                try:
                    px = load_image(path, h, self.model.config, self.model.image_size)
                except ValueError:
                    continue
                tok = self.model.encode_images(px[None].to(self.model.device, self.model.dtype))[0]
                return tok.float().cpu().numpy()
        return None

    # ---- the writer thread -----------------------------------------------------------------
    def _write_loop(self) -> None:
        """Drain the queue in order. A writer error poisons only its unit: the unit is aborted
        (nothing visible) and its commit future carries the exception."""
        extra: dict[int, list[Failure]] = {}  # id(writer) -> samples the store refused
        errors: dict[int, BaseException] = {}
        while True:
            kind, w, payload, done = self._q.get()
            key = id(w)
            try:
                if kind == "batch" and key not in errors:
                    samples, images = payload
                    for h, tok in images:
                        w.add_image(h, tok)
                    for s in samples:
                        try:
                            w.add_sample(s)
                        except SampleValidationError as exc:  # e.g. NaN logits of one sample
                            extra.setdefault(key, []).append(Failure(s.sample_id, f"teacher output rejected: {exc}"))
                elif kind == "abort":
                    w.abort()
                elif kind == "commit":
                    if key in errors:
                        raise errors[key]
                    failures = payload + extra.get(key, [])
                    write_failures(Path(self.spec.failures_dir), w.unit_id, failures)  # before the commit
                    w.commit()
                    done.set_result(failures)
            except BaseException as exc:  # noqa: BLE001 — handed to the unit's caller
                if kind == "commit":
                    w.abort()
                    done.set_exception(exc)
                else:
                    errors[key] = exc
            if kind in ("commit", "abort"):
                extra.pop(key, None)
                errors.pop(key, None)
