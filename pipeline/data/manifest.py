"""Build the manifest: every dataset of `wf.data.datasets` → one parquet file, one row per sample.

    build_manifest(wf, command="alignkd data build ...") -> BuildReport

Records stream from the JSON (never the whole file in memory), go to `num_workers` processes in
batches of `batch_size` (template + fast-tokenizer batch + image hash/check), and come back in
order as Arrow record batches, written in row groups. Rejected records go to the rejects JSONL
with their reason. All outputs are written to temporary files and renamed at the end, manifest
last, so a crashed build leaves the previous outputs (or none), never a half manifest.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.data import ManifestError
from pipeline.data.contract import MANIFEST_VERSION, manifest_schema, read_manifest_meta  # noqa: F401 (re-exported)
from pipeline.data.jsonstream import iter_json_array
from pipeline.data.records import DatasetJob, init_worker, process_batch
from pipeline.data.report import BuildReport, DatasetCounts
from pipeline.fingerprint import tokenizer_fingerprint
from pipeline.templates import TEMPLATES
from pipeline.workflow import Workflow

ROW_GROUP_ROWS = 8192  # ~8k samples per row group: big enough to compress, small to read one


def build_manifest(wf: Workflow, command: str = "", progress: bool = True) -> BuildReport:
    """Build `wf.data.manifest`, `wf.data.rejects` and the count tables beside the manifest."""
    data = wf.data
    _check_config(wf)
    subsets = tuple(data.subsets.items())
    schema = manifest_schema([s for s, _ in subsets]).with_metadata(_file_metadata(wf, command))
    out, rej_out = Path(data.manifest), Path(data.rejects)
    md, js = report_paths(out)
    report = BuildReport(subsets=dict(subsets), num_vision_tokens=wf.models.num_vision_tokens)
    tmp: list[Path] = []
    try:
        tmp_out, tmp_rej, tmp_md, tmp_js = (_tmp(p, tmp) for p in (out, rej_out, md, js))
        # the pool first: fork before pyarrow starts writer threads
        with _Runner(data.tokenizer, data.num_workers) as run, _Sink(tmp_out, tmp_rej, schema) as sink:
            for ds in data.datasets:
                job = DatasetJob(ds.name, ds.stage, ds.template, os.path.abspath(ds.image_root),
                                 wf.models.num_vision_tokens, subsets, data.image_check)
                counts = report.add(DatasetCounts(ds.name, ds.stage, ds.template, {s: 0 for s, _ in subsets}))
                with _progress(ds.name, progress) as bar:
                    for batch, rejected in run.map(job, _batches(ds.name, ds.json, data.batch_size)):
                        sink.write(batch, rejected + _over_long(batch, ds.name, subsets))
                        _count(counts, batch, rejected, subsets)
                        bar.update(batch.num_rows + len(rejected))
        tmp_md.write_text(report.markdown(), encoding="utf-8")
        tmp_js.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
        for src, dst in ((tmp_rej, rej_out), (tmp_md, md), (tmp_js, js), (tmp_out, out)):
            os.replace(src, dst)  # the manifest last: it is what later phases look for
    finally:
        for p in tmp:
            p.unlink(missing_ok=True)
    return report


def report_paths(manifest: str | Path) -> tuple[Path, Path]:
    """Where the count tables of a manifest go: `<stem>.counts.md` and `<stem>.counts.json`."""
    m = Path(manifest)
    return m.with_name(m.stem + ".counts.md"), m.with_name(m.stem + ".counts.json")


# -------------------------------------------------------------------------------------- helpers
def _check_config(wf: Workflow) -> None:
    d, problems = wf.data, []
    if not d.datasets:
        problems.append("data.datasets is empty")
    names = [ds.name for ds in d.datasets]
    for i, ds in enumerate(d.datasets):
        where = f"data.datasets[{i}] ({ds.name or 'unnamed'})"
        if not ds.name or "/" in ds.name or names.count(ds.name) > 1:
            problems.append(f"{where}: name must be non-empty, unique and without '/' (it prefixes sample ids)")
        if ds.template not in TEMPLATES:
            problems.append(f"{where}: unknown template {ds.template!r} (known: {', '.join(TEMPLATES)})")
        if ds.stage not in ("pretrain", "finetune"):
            problems.append(f"{where}: stage must be pretrain or finetune, got {ds.stage!r}")
    if not d.subsets or any(v <= 0 for v in d.subsets.values()):
        problems.append(f"data.subsets must map names to positive limits, got {d.subsets}")
    if d.image_check not in ("load", "verify"):
        problems.append(f"data.image_check must be load or verify, got {d.image_check!r}")
    if d.batch_size <= 0:
        problems.append(f"data.batch_size must be positive, got {d.batch_size}")
    if not d.tokenizer or not Path(d.tokenizer).is_dir():
        problems.append(f"data.tokenizer: no tokenizer directory at {d.tokenizer!r} (for the toy world run `alignkd toy world`)")
    if problems:
        raise ManifestError(f"{wf.source or 'workflow'}: cannot build the manifest:\n  - " + "\n  - ".join(problems))


def _file_metadata(wf: Workflow, command: str) -> dict[str, str]:
    d = wf.data
    meta = {
        "manifest_version": MANIFEST_VERSION,
        "tokenizer": d.tokenizer,
        "tokenizer_fingerprint": tokenizer_fingerprint(d.tokenizer),
        "num_vision_tokens": wf.models.num_vision_tokens,
        "subsets": dict(d.subsets),
        "datasets": [{"name": s.name, "json": s.json, "image_root": s.image_root, "template": s.template,
                      "stage": s.stage} for s in d.datasets],
        "image_check": d.image_check,
        "workflow": wf.source,
        "build_command": command or " ".join(sys.argv),
    }
    return {k: json.dumps(v) for k, v in meta.items()}


def _tmp(final: Path, registry: list[Path]) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    p = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    registry.append(p)
    return p


def _batches(dataset: str, json_path: str, size: int) -> Iterator[list[tuple[int, str, Any]]]:
    """(record_index, sample_id, record) in batches. Ids are `{dataset}/{id}` (`@{index}` for a
    record without one), `#n` for the n-th repeat; rejected records count too, so an id does not
    change when an earlier duplicate's image is restored."""
    used: set[str] = set()
    batch: list[tuple[int, str, Any]] = []
    for index, rec in iter_json_array(json_path):
        rid = rec.get("id") if isinstance(rec, dict) else None
        base = f"{dataset}/{rid}" if isinstance(rid, (str, int)) and not isinstance(rid, bool) else f"{dataset}/@{index}"
        sid, n = base, 0
        while sid in used:
            n += 1
            sid = f"{base}#{n}"
        used.add(sid)
        batch.append((index, sid, rec))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _over_long(batch: pa.RecordBatch, dataset: str, subsets: tuple) -> list[dict]:
    """Rows in no subset, as rejects-file lines (reason too_long) so a user finds each by record:
    they stay in the manifest (a longer subset added later may take them) and are counted as
    too_long, not as rejected, in the count tables."""
    if not batch.num_rows:
        return []
    cols = batch.to_pydict()
    limits = ", ".join(f"{s} {lim}" for s, lim in subsets)
    return [{"dataset": dataset, "record_index": cols["record_index"][i],
             "record_id": cols["sample_id"][i].split("/", 1)[1], "sample_id": cols["sample_id"][i], "reason": "too_long",
             "detail": f"embedded length {cols['embedded_len'][i]} exceeds every subset limit ({limits}); "
                       "kept in the manifest in no subset"}
            for i in range(batch.num_rows) if not any(cols[f"in_{s}"][i] for s, _ in subsets)]


def _count(c: DatasetCounts, batch: pa.RecordBatch, rejected: list[dict], subsets: tuple) -> None:
    c.records += batch.num_rows + len(rejected)
    c.valid += batch.num_rows
    if batch.num_rows:
        member = [batch.column(f"in_{s}") for s, _ in subsets]
        for (s, _), col in zip(subsets, member):
            c.in_subset[s] += int(pc.sum(col).as_py() or 0)
        in_none = pc.invert(member[0])
        for col in member[1:]:
            in_none = pc.and_(in_none, pc.invert(col))
        c.too_long += int(pc.sum(in_none).as_py() or 0)
    for r in rejected:
        c.rejected[r["reason"]] = c.rejected.get(r["reason"], 0) + 1


def _progress(name: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(desc=name, unit="rec", disable=not enabled, dynamic_ncols=True)


class _Sink:
    """Manifest rows in row groups of ~ROW_GROUP_ROWS, rejects as JSON lines."""

    def __init__(self, manifest: Path, rejects: Path, schema: pa.Schema):
        self.schema, self.pending, self.n_pending = schema, [], 0
        self.writer = pq.ParquetWriter(manifest, schema, compression="zstd")
        self.rejects = open(rejects, "w", encoding="utf-8")

    def write(self, batch: pa.RecordBatch, rejected: list[dict]) -> None:
        for r in rejected:
            self.rejects.write(json.dumps(r) + "\n")  # ensure_ascii: lone surrogates stay valid JSON
        self.pending.append(batch)
        self.n_pending += batch.num_rows
        if self.n_pending >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.writer.write_table(pa.Table.from_batches(self.pending, schema=self.schema), row_group_size=1 << 30)
        self.pending, self.n_pending = [], 0

    def __enter__(self) -> "_Sink":
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if exc[0] is None:
                self._flush()
        finally:
            self.writer.close()
            self.rejects.close()


class _Runner:
    """Runs `process_batch` inline (num_workers <= 1) or in a process pool, results in order.
    At most 2 tasks per worker are in flight: Pool.imap would read the whole JSON ahead."""

    def __init__(self, tokenizer_dir: str, num_workers: int):
        self.tokenizer_dir, self.num_workers, self.pool = tokenizer_dir, num_workers, None

    def __enter__(self) -> "_Runner":
        from pipeline.tokenizer_load import TokenizerLoadError, load_tokenizer

        try:
            tokenizer = load_tokenizer(self.tokenizer_dir)
        except TokenizerLoadError as exc:
            raise ManifestError(f"data.tokenizer: {exc}") from exc
        if self.num_workers <= 1:
            init_worker(tokenizer)
            return self
        # fork: workers inherit the loaded modules and tokenizer (spawn re-imports everything,
        # ~10 s per worker on a busy 2-core machine). The parent has not tokenised yet, and
        # TOKENIZERS_PARALLELISM=false across the fork keeps `tokenizers` from warning about it.
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        old = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        try:
            self.pool = mp.get_context(method).Pool(self.num_workers, init_worker, (tokenizer, True))
        finally:
            if old is None:
                os.environ.pop("TOKENIZERS_PARALLELISM")
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = old
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.pool is not None:
            self.pool.terminate() if exc[0] else self.pool.close()
            self.pool.join()

    def map(self, job: DatasetJob, batches: Iterator[list]) -> Iterator[tuple[pa.RecordBatch, list[dict]]]:
        if self.pool is None:
            for items in batches:
                yield process_batch(job, items)
            return
        inflight: deque = deque()
        for items in batches:
            inflight.append(self.pool.apply_async(process_batch, (job, items)))
            if len(inflight) >= 2 * self.num_workers:
                yield inflight.popleft().get()
        while inflight:
            yield inflight.popleft().get()
