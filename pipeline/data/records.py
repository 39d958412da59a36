"""Turn a batch of LLaVA records into manifest rows (a pyarrow RecordBatch) and rejects.

Runs in worker processes (or inline); `init_worker` hands each process the tokenizer once.
A bad record never raises here; it becomes a reject {dataset, record_index, record_id, reason,
detail}. Anything else that raises is a bug and stops the build.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.data.contract import manifest_schema
from pipeline.fingerprint import token_fingerprint
from pipeline.positions import sample_index
from pipeline.templates import Segment, TemplateError, render, tokenize_segments

_TOKENIZER: Any = None
_IMAGE_CACHE: dict[str, tuple[str, str, str]] = {}  # path -> (hash, reason, detail); per process
_IMAGE_CACHE_MAX = 200_000  # unique images remembered (shared images are hashed once per worker)


@dataclass(frozen=True)
class DatasetJob:
    """What a worker needs to know about the dataset a batch comes from (picklable)."""

    name: str
    stage: str
    template: str
    image_root: str  # absolute
    num_vision_tokens: int
    subsets: tuple[tuple[str, int], ...]  # (name, max embedded length), in column order
    image_check: str  # load | verify


def init_worker(tokenizer: Any, in_pool: bool = False) -> None:
    """Set this process's tokenizer (a loaded HF fast tokenizer). Pool workers each tokenise one
    batch at a time, so the tokenizer's own thread pool would only compete with the other workers
    for the same cores: turn it off there."""
    global _TOKENIZER
    if in_pool:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _TOKENIZER = tokenizer


def process_batch(job: DatasetJob, items: list[tuple[int, str, Any]]) -> tuple[pa.RecordBatch, list[dict]]:
    """items: (record_index, sample_id, record). Returns the manifest rows and the rejects."""
    assert _TOKENIZER is not None, "init_worker() first"
    bos, eos = _TOKENIZER.bos_token_id, _TOKENIZER.eos_token_id
    rejects: list[dict] = []
    kept: list[tuple[int, str, str, str, str, list[Segment]]] = []  # index, sid, image, path, hash, segs
    for index, sid, rec in items:
        rid = rec.get("id") if isinstance(rec, dict) else None
        try:
            image, segs = _render_record(rec, job, bos, eos)
            path, digest = _check_image(image, job) if image else ("", "")
        except TemplateError as exc:
            rejects.append({"dataset": job.name, "record_index": index, "record_id": rid,
                            "reason": exc.reason, "detail": exc.detail})
            continue
        kept.append((index, sid, image, path, digest, segs))
    encoded = tokenize_segments([k[-1] for k in kept], _TOKENIZER)
    cols: dict[str, list] = {name: [] for name in manifest_schema([s for s, _ in job.subsets]).names}
    for (index, sid, image, path, digest, _), enc in zip(kept, encoded):
        idx = sample_index(enc.input_ids, enc.labels, job.num_vision_tokens)
        for name, value in (
            ("sample_id", sid), ("dataset", job.name), ("stage", job.stage), ("template", job.template),
            ("record_index", index), ("image", image), ("image_path", path), ("image_hash", digest),
            ("input_ids", enc.input_ids), ("labels", enc.labels),
            ("token_hash", token_fingerprint(enc.input_ids, enc.labels)), ("embedded_len", idx.length),
            ("n_text_after_image", idx.n_text_after), ("n_response", len(idx.resp)),
        ):
            cols[name].append(value)
        for s, limit in job.subsets:  # membership, never truncation
            cols[f"in_{s}"].append(idx.length <= limit)
    schema = manifest_schema([s for s, _ in job.subsets])
    return pa.RecordBatch.from_pydict(cols, schema=schema), rejects


def _render_record(rec: Any, job: DatasetJob, bos: int, eos: int) -> tuple[str, list[Segment]]:
    """Validate the record's shape and render its conversation; returns (image, segments)."""
    if not isinstance(rec, dict):
        raise TemplateError("not_a_record", f"expected a JSON object, got {type(rec).__name__}")
    rid = rec.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int))):
        raise TemplateError("bad_id", f"id must be a string or an integer, got {type(rid).__name__}")
    image = rec.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise TemplateError("bad_image_field", f"image must be a non-empty path string, got {image!r}")
    for what, text in (("id", rid), ("image", image)):
        if isinstance(text, str) and not _is_utf8(text):
            raise TemplateError("non_utf8", f"the {what} field is not valid UTF-8")
    if "conversations" not in rec:
        raise TemplateError("missing_conversations", "the record has no 'conversations' list")
    segs = render(rec["conversations"], job.template, image is not None, bos_id=bos, eos_id=eos)
    return image or "", segs


def _is_utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:  # lone surrogates from undecodable bytes
        return False


def _check_image(image: str, job: DatasetJob) -> tuple[str, str]:
    """(absolute path, sha256[:16] of the bytes) of a readable, decodable image; else TemplateError."""
    path = os.path.abspath(os.path.join(job.image_root, image))
    # "../x.png" or an absolute path would read a file from outside the dataset's image_root
    # (another dataset's, or anything the process can read): refuse it by record
    if os.path.commonpath([path, job.image_root]) != job.image_root:
        raise TemplateError("image_outside_root", f"image {image!r} resolves to {path}, outside image_root {job.image_root}")
    if path not in _IMAGE_CACHE:
        if len(_IMAGE_CACHE) >= _IMAGE_CACHE_MAX:
            _IMAGE_CACHE.clear()
        _IMAGE_CACHE[path] = _hash_and_verify(path, job.image_check)
    digest, reason, detail = _IMAGE_CACHE[path]
    if reason:
        raise TemplateError(reason, f"{detail} ({path})")
    return path, digest


def _hash_and_verify(path: str, mode: str) -> tuple[str, str, str]:
    import io

    from PIL import Image

    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return "", "image_missing", "image file not found"
    except OSError as exc:
        return "", "image_unreadable", f"cannot read the image file: {exc.strerror or exc}"
    try:
        with Image.open(io.BytesIO(data)) as im:
            if mode == "load":
                im.load()  # full decode: raises on truncated or corrupt pixel data
            else:
                im.verify()  # headers and (PNG) chunk CRCs, no decode
    except Exception as exc:  # noqa: BLE001 — PIL raises many types (OSError, SyntaxError, struct.error, ...)
        return "", "image_corrupt", f"PIL cannot {'decode' if mode == 'load' else 'verify'} the image: {type(exc).__name__}: {exc}"
    return hashlib.sha256(data).hexdigest()[:16], "", ""
