"""Check every input of a dump before Ray starts, and resolve them into one `DumpJob`.

All problems are collected and reported at once (torchtune's `tune validate` habit), each naming
the file or config key and the fix: the manifest and its subset, the tokenizer the manifest was
built with vs `data.tokenizer`, one vocabulary for data.tokenizer, the teacher and (when present)
the student (`pipeline.preflight`, shared with student-train), the teacher checkpoint's shape vs
the manifest's vision tokens, the images on disk, the `dump:`/`cache:` settings, and, when a
store already exists, its provenance (resume only into a store made by the same
teacher/tokenizer/subset/encoding).

A dry run (`dry_run=True`) checks the same from config.json and tokenizer files alone: missing
weight files become a note, and the weights are not hashed unless a store exists to resume into.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc

from cache_schema import CacheError, CacheStore, Encoding, Provenance
from cache_schema.create import store_state
from cache_schema.provenance import check_provenance
from pipeline.fingerprint import checkpoint_fingerprint, config_fingerprint, tokenizer_fingerprint, tower_fingerprint
from pipeline.preflight import ModelInfo, check_vocab, inspect_model
from pipeline.workflow import CacheConfig, Workflow, WorkflowError
from teacher_dump.manifest import SubsetRows, read_subset, subset_fingerprint

DTYPES = ("float32", "float16", "bfloat16")
# workflow `cache:` spellings -> cache_schema Encoding modes (cache_schema's own names pass through)
_ATTN = {"float32": "f32", "float16": "f16", "uint8": "u8", "uint8sqrt": "u8sqrt",
         # opt-in low-bit codes (one per byte; the zstd branch below gives them the bitshuffle codec)
         "uint6": "u6", "uint6sqrt": "u6sqrt", "uint5": "u5", "uint5sqrt": "u5sqrt",
         "uint4": "u4", "uint4sqrt": "u4sqrt"}
_LOGPROB = {"float32": "f32", "float16": "f16"}
_VISION = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
NOT_HASHED = "not-hashed-in-dry-run"  # teacher_fingerprint of a dry run's provenance (weights unread)


class DumpInputError(ValueError):
    """One or more inputs of the dump are invalid (every problem listed)."""


@dataclass
class DumpJob:
    """Everything the dump needs, resolved and checked (absolute paths: actors may run elsewhere)."""

    wf: Workflow
    subset: str
    store_path: Path
    failures_dir: Path
    teacher_dir: Path
    rows: SubsetRows
    provenance: Provenance
    workers: int
    batch_size: int
    unit_size: int
    dtype: str
    num_gpus: float
    num_cpus: float
    max_retries: int
    capture_layers: tuple[str, ...] = ("first",)
    capture_blocks: tuple[str, ...] = ("tv",)
    resume: bool = False  # the store exists already (its provenance matched)
    teacher: ModelInfo | None = None  # the teacher as its config describes it (for the plan)
    vocab: str = ""  # the tokenizer check's summary line
    notes: list[str] = field(default_factory=list)  # what a dry run let pass but a real run needs


def encoding_from_cache(cache: CacheConfig) -> Encoding:
    """The store encoding the workflow's `cache:` section asks for (ValueError naming the key)."""
    def mode(table: dict, key: str, value: str) -> str:
        if value in table.values():
            return value
        if value not in table:
            raise ValueError(f"cache.{key}={value!r} (allowed: {', '.join(table)})")
        return table[value]

    c, lvl = cache.compressor, cache.compression_level
    if c == "none":
        attn_codec = logits_codec = vision_codec = "none"
    elif c == "zstd":
        # measured by `alignkd cache size-table`: float attention compresses best bit-plane by
        # bit-plane (bitshuffle), 8-bit codes best with plain zstd; log-probs/tokens byte-shuffled
        attn_8bit = mode(_ATTN, "attn_dtype", cache.attn_dtype) in ("u8", "u8sqrt")
        attn_codec = f"zstd:{lvl}" if attn_8bit else f"blosc:zstd:{lvl}:bitshuffle"
        logits_codec, vision_codec = f"blosc:zstd:{lvl}:shuffle", f"blosc:zstd:{lvl}:shuffle"
    elif c in ("lz4", "lz4hc", "blosclz", "zlib"):
        attn_codec, logits_codec, vision_codec = f"blosc:{c}:{lvl}:bitshuffle", f"blosc:{c}:{lvl}:shuffle", f"blosc:{c}:{lvl}:shuffle"
    else:
        raise ValueError(f"cache.compressor={c!r} (allowed: none, zstd, lz4, lz4hc, blosclz, zlib)")
    return Encoding(
        attn=mode(_ATTN, "attn_dtype", cache.attn_dtype),
        logprobs=mode(_LOGPROB, "logprob_dtype", cache.logprob_dtype),
        vision=mode(_VISION, "vision_dtype", cache.vision_dtype),
        attn_codec=attn_codec, logits_codec=logits_codec, vision_codec=vision_codec,
    )


PROJECTOR_TOKENS = ("auto", "recompute", "stored")


def projector_tokens_mode(wf: Workflow, teacher_tower: str, problems: list[str], notes: list[str]) -> str:
    """cache.projector_tokens → "stored" | "recompute" for the store. auto: recompute only when
    models.student is at hand and its tower fingerprint equals the teacher's (the one case where
    the student can rebuild the teacher's tokens exactly); recompute with a student whose tower
    differs is a problem, with no student at hand a note (student-train checks it again)."""
    want = wf.cache.projector_tokens
    if want not in PROJECTOR_TOKENS:
        problems.append(f"cache.projector_tokens={want!r} (allowed: {', '.join(PROJECTOR_TOKENS)})")
        return "stored"
    if want == "stored":
        return want
    student = Path(wf.models.student).expanduser()
    try:
        student_tower = tower_fingerprint(student) if (student / "config.json").is_file() else None
    except (FileNotFoundError, ValueError, OSError) as exc:  # no weights yet, unreadable config
        notes.append(f"cache.projector_tokens: the student's tower could not be read ({exc})")
        student_tower = None
    if want == "auto":
        if student_tower is not None and student_tower == teacher_tower:
            return "recompute"
        why = ("the student's tower differs from the teacher's" if student_tower else
               f"{wf.label('models.student')} is not at hand to compare towers")
        notes.append(f"cache.projector_tokens auto -> stored ({why}): the teacher's projector tokens are written "
                     "per image (~1.08 MB each at the 7B's width)")
        return "stored"
    if student_tower is not None and student_tower != teacher_tower:
        problems.append(f"cache.projector_tokens=recompute but the student's vision tower ({student_tower}, "
                        f"{student}) differs from the teacher's ({teacher_tower}): the student cannot rebuild "
                        "the teacher's tokens; set cache.projector_tokens: stored")
    elif student_tower is None:
        notes.append("cache.projector_tokens=recompute with no student at hand: student-train will refuse a student "
                     f"whose vision tower fingerprint is not {teacher_tower}")
    return "recompute"


ATTENTION = ("auto", "recompute", "stored")


def attention_mode(wf: Workflow, tokens: str, blocks: tuple[str, ...], problems: list[str], notes: list[str]) -> str:
    """cache.attention → "stored" | "recompute": recompute needs the projector tokens recomputed
    (they are part of layer 0's input) and first-layer blocks only; auto takes it whenever it can."""
    want = wf.cache.attention
    if want not in ATTENTION:
        problems.append(f"cache.attention={want!r} (allowed: {', '.join(ATTENTION)})")
        return "stored"
    ok = tokens == "recompute" and all(b.startswith("first.") for b in blocks)
    if want == "recompute" and not ok:
        problems.append(f"cache.attention=recompute needs the projector tokens recomputed (they are {tokens}) and "
                        f"first-layer blocks only (cache.layers {list(wf.cache.layers)}): set cache.attention: stored")
    if want == "auto" and not ok:
        notes.append("cache.attention auto -> stored (the teacher's attention needs its projector tokens recomputed and "
                     "first-layer blocks only to be recomputed)")
    return "recompute" if ok and want != "stored" else "stored"


def _abs(p: str) -> Path:
    return Path(p).expanduser().resolve()


def _check_dump_section(wf: Workflow, workers: int, batch_size: int, problems: list[str]) -> None:
    d = wf.dump
    for name, v in (("workers", workers), ("batch_size", batch_size), ("unit_size", d.unit_size)):
        if v < 1:
            problems.append(f"dump.{name}={v}: must be ≥ 1")
    if d.max_retries < 0:
        problems.append(f"dump.max_retries={d.max_retries}: must be ≥ 0")
    if d.num_gpus_per_worker < 0 or d.num_cpus_per_worker <= 0:
        problems.append("dump.num_gpus_per_worker must be ≥ 0 and dump.num_cpus_per_worker > 0")
    if d.dtype not in DTYPES:
        problems.append(f"dump.dtype={d.dtype!r} (allowed: {', '.join(DTYPES)})")
    elif d.dtype == "float16" and d.num_gpus_per_worker == 0:
        problems.append("dump.dtype=float16 needs GPU actors (dump.num_gpus_per_worker > 0); on CPU use float32 or bfloat16")


def _check_teacher(teacher: Path, label: str, meta: dict, problems: list[str], notes: list[str],
                   dry_run: bool) -> ModelInfo | None:
    """The teacher as its config describes it (None when unusable; problems appended). No weight
    files is a problem, or in a dry run a note (the dry run never opens them)."""
    from pipeline.models.config import projector_grid

    info = inspect_model(teacher, label, problems)
    if info is None:
        return None
    cfg = info.config
    if not info.weight_bytes:
        msg = f"{label} ({teacher}): no weight files (*.safetensors / *.bin)"
        (notes if dry_run else problems).append(msg + ("; the dry run read config.json only, the dump needs them"
                                                       if dry_run else ""))
    nv = projector_grid(cfg) ** 2
    if meta.get("num_vision_tokens") != nv:
        problems.append(
            f"the teacher emits {nv} vision tokens (mm_projector_grid {projector_grid(cfg)}) but the manifest was "
            f"built for num_vision_tokens={meta.get('num_vision_tokens')}: set models.num_vision_tokens to {nv} "
            f"and rebuild the manifest (`alignkd data build`), or point models.teacher at the right checkpoint"
        )
    return info


def _check_tokenizers(wf: Workflow, tok: Path, teacher: ModelInfo | None, problems: list[str],
                      notes: list[str]) -> str:
    """One vocabulary for data.tokenizer, the teacher and the student (when its directory is at
    hand: the dump does not need it, but a cache its tokenizer cannot read is useless)."""
    student = None
    if Path(wf.models.student).expanduser().is_dir():
        student_problems: list[str] = []
        student = inspect_model(wf.models.student, wf.label("models.student"), student_problems)
        notes += [f"{p} (the dump does not need the student; student-train will refuse it)" for p in student_problems]
    line, bad = check_vocab(tok, wf.label("data.tokenizer"), [teacher, student])
    problems += bad
    return line


def _check_images(rows: SubsetRows, problems: list[str]) -> None:
    t = rows.table
    paths = {p for p, h in zip(t.column("image_path").to_pylist(), t.column("image_hash").to_pylist()) if h}
    with ThreadPoolExecutor(32) as pool:  # stat calls on a network filesystem: overlap their latency
        present = dict(zip(paths, pool.map(lambda p: Path(p).is_file(), paths)))
    missing = sorted(p for p, ok in present.items() if not ok)
    if missing:
        show = ", ".join(missing[:5]) + (f", … (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        problems.append(f"{len(missing)} of {len(paths)} image file(s) of the subset are missing: {show} "
                        "(mount the image folders, or rebuild the manifest)")


def check_inputs(wf: Workflow, subset: str, workers: int | None = None, batch_size: int | None = None,
                 dry_run: bool = False) -> DumpJob:
    """Validate everything (no Ray, no model weights loaded) → DumpJob; DumpInputError otherwise.
    dry_run: weights may be absent (a note) and are not hashed unless a store exists."""
    problems: list[str] = []
    notes: list[str] = []
    try:
        limit = wf.subset_limit(subset)
    except WorkflowError as exc:
        raise DumpInputError(str(exc)) from None
    workers = wf.dump.workers if workers is None else workers
    batch_size = wf.dump.batch_size if batch_size is None else batch_size
    _check_dump_section(wf, workers, batch_size, problems)
    try:
        encoding = encoding_from_cache(wf.cache)
    except ValueError as exc:
        problems.append(str(exc))
        encoding = None

    manifest = _abs(wf.data.manifest)
    if not manifest.is_file():
        raise DumpInputError(f"{wf.label('data.manifest')}: no manifest at {manifest}; "
                             f"build it with `alignkd data build --workflow {wf.source}`")
    try:
        rows = read_subset(manifest, subset)
    except ValueError as exc:
        raise DumpInputError(str(exc)) from None
    meta = rows.meta
    if rows.table.num_rows == 0:
        problems.append(f"subset {subset!r} of {manifest} is empty")
    if meta.get("subsets", {}).get(subset) not in (None, limit):
        problems.append(f"data.subsets.{subset}={limit} but the manifest was built with {meta['subsets'][subset]}: rebuild the manifest")

    tok = _abs(wf.data.tokenizer)
    tok_fp = None
    try:
        tok_fp = tokenizer_fingerprint(tok)
    except FileNotFoundError as exc:
        problems.append(f"{wf.label('data.tokenizer')}: {exc}")
    if tok_fp and meta.get("tokenizer_fingerprint") != tok_fp:
        problems.append(
            f"the manifest was tokenised with tokenizer {meta.get('tokenizer_fingerprint')} but data.tokenizer ({tok}) "
            f"is {tok_fp}: rebuild the manifest with the teacher's tokenizer"
        )
    teacher = _abs(wf.models.teacher)
    info = _check_teacher(teacher, wf.label("models.teacher"), meta, problems, notes, dry_run)
    cfg = info.config if info is not None else None
    vocab = _check_tokenizers(wf, tok, info, problems, notes)
    _check_images(rows, problems)
    if cfg is not None and rows.table.num_rows:
        top = pc.max(pc.list_flatten(rows.table.column("input_ids"))).as_py()
        if top is not None and top >= cfg.vocab_size:
            problems.append(f"the manifest holds token id {top} but the teacher's vocab_size is {cfg.vocab_size}: "
                            "the manifest was tokenised for another model")

    layers = tuple(dict.fromkeys(wf.cache.layers))
    blocks = tuple(dict.fromkeys(wf.cache.blocks))
    store = _abs(str(wf.cache_path(subset)))
    state = store_state(store)
    resume = state == "store"
    prov = None
    if cfg is not None and encoding is not None and tok_fp and not problems:
        # hashing reads every weight (~1 min for 14 GB): a dry run does it only to check a resume
        hashed = not dry_run or (resume and info.weight_bytes > 0)
        try:
            tower = tower_fingerprint(teacher) if info.weight_bytes else NOT_HASHED
        except (FileNotFoundError, ValueError, OSError) as exc:
            problems.append(f"{wf.label('models.teacher')}: cannot read its vision tower ({exc})")
            tower = NOT_HASHED
        mode = projector_tokens_mode(wf, tower, problems, notes)
        attention = attention_mode(wf, mode, tuple(f"{l}.{b}" for l in layers for b in blocks), problems, notes)
        try:
            prov = Provenance(
                teacher_fingerprint=checkpoint_fingerprint(teacher) if hashed else NOT_HASHED,
                teacher_config_fingerprint=config_fingerprint(teacher),
                tokenizer_fingerprint=tok_fp,
                manifest_fingerprint=subset_fingerprint(rows.table),
                templates=tuple(sorted(set(rows.table.column("template").to_pylist()))),
                subset=subset, max_length=limit, num_vision_tokens=meta["num_vision_tokens"],
                teacher_heads=cfg.num_attention_heads, teacher_hidden_size=cfg.hidden_size,
                vocab_size=cfg.vocab_size, logits_topk=wf.cache.logits_topk, focus_k=wf.cache.focus_k,
                attn_blocks=tuple(f"{l}.{b}" for l in layers for b in blocks), encoding=encoding,
                projector_tokens=mode, vision_tower_fingerprint=tower, attention=attention,
            )
        except ValueError as exc:
            problems.append(f"cache section: {exc}")
    if problems:
        raise DumpInputError(f"{wf.source or 'workflow'}: cannot dump subset {subset!r}, {len(problems)} problem(s):\n  - "
                             + "\n  - ".join(problems))

    if resume:  # the resume rule: same teacher, tokenizer, manifest subset, top-k, encoding, ...
        expect = prov.identity()
        if expect["teacher_fingerprint"] == NOT_HASHED:  # a dry run without the weights: compare the rest
            del expect["teacher_fingerprint"]
            notes.append(f"the teacher's weights were not hashed: {store}'s teacher_fingerprint is checked by the dump")
        try:
            check_provenance(f"existing cache {store}", expect, CacheStore.open(store).provenance)
        except CacheError as exc:
            raise DumpInputError(f"{exc}\n(resuming into {store} needs the provenance it was created with; "
                                 f"move it aside or set cache.dir to start a new cache)") from None
    elif state == "foreign":  # "skeleton" (an older version's unfinished creation) is recreated
        raise DumpInputError(f"{store} exists, is not empty and is not an alignkd cache: set cache.dir elsewhere")
    d = wf.dump
    return DumpJob(
        wf=wf, subset=subset, store_path=store, failures_dir=store.with_name(store.name + ".failures"),
        teacher_dir=teacher, rows=rows, provenance=prov, workers=workers, batch_size=batch_size,
        unit_size=d.unit_size, dtype=d.dtype, num_gpus=d.num_gpus_per_worker, num_cpus=d.num_cpus_per_worker,
        max_retries=d.max_retries, capture_layers=tuple(dict.fromkeys(("first",) + layers)),
        capture_blocks=tuple(dict.fromkeys(("tv",) + blocks)), resume=resume, teacher=info, vocab=vocab, notes=notes,
    )
