"""Checks that refuse a run before any rank trains: the store's provenance (`check_store`) and,
here, what only the launching process checks: that the store was dumped by this workflow's teacher
weights from this manifest (`check_store_identity`), and every sample's token fingerprint against
the manifest, read from the store's index (no payload is read: a vectorised join of two string
columns, seconds for millions of samples).

The per-sample check in the data loader stays (it also covers images and sizes), but it fires
only when a sample is reached — possibly hours into a run.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pyarrow.compute as pc

from cache_schema.index import load_index
from pipeline.data.contract import read_manifest, subset_column
from pipeline.fingerprint import checkpoint_fingerprint, manifest_subset_fingerprint
from pipeline.workflow import Workflow
from student_train.data import MissingSampleError, StoreMismatchError
from student_train.data.manifest import stage_mask

_SHOW = 5
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_REDUMP = "re-run `alignkd teacher-dump` with this workflow, or point cache.dir at the store dumped for it"


@functools.lru_cache(maxsize=4)
def _weights_fingerprint(teacher: Path, stamp: tuple) -> str:
    """checkpoint_fingerprint, once per process for unchanged files (`--stage all` checks twice)."""
    return checkpoint_fingerprint(teacher)


def check_store_identity(wf: Workflow, subset: str, prov, store: Path) -> list[str]:
    """Refuse a store dumped by other teacher weights or from another manifest subset than this
    workflow's (StoreMismatchError naming the field and both values); returns notes.

    `check_store` compares only the teacher's config.json, so a teacher with the same architecture
    and other weights passed, and trained the student on the wrong targets. Here the teacher's
    weights are hashed (as the dump did: ~1 min for 14 GB) when they are at hand; a cached run
    without them can only say so. The manifest subset's digest must match unless
    train.missing_sample is "skip" (then the samples both hold are used, their tokens checked by
    `check_token_hashes`)."""
    notes = []
    teacher = Path(wf.models.teacher)
    weights = sorted(p for p in teacher.glob("*") if p.name.endswith(_WEIGHT_SUFFIXES)) if teacher.is_dir() else []
    if weights and (teacher / "config.json").is_file():
        stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in [teacher / "config.json", *weights])
        got = _weights_fingerprint(teacher.resolve(), stamp)
        if got != prov.teacher_fingerprint:
            raise StoreMismatchError(
                f"cache {store}: teacher_fingerprint differs: models.teacher ({teacher}) is {got}, the store was dumped "
                f"by a teacher with {prov.teacher_fingerprint} (same config, other weights?): {_REDUMP}, or set "
                "models.teacher to the teacher it was dumped by")
    else:
        notes.append(f"teacher weights not in {teacher}: the store's teacher_fingerprint {prov.teacher_fingerprint} "
                     "is not checked")
    got = manifest_subset_fingerprint(wf.data.manifest, subset)
    if got != prov.manifest_fingerprint:
        if wf.train.missing_sample != "skip":
            raise StoreMismatchError(
                f"cache {store}: manifest_fingerprint differs: subset {subset!r} of {wf.data.manifest} is {got}, the "
                f"store was dumped from {prov.manifest_fingerprint}: {_REDUMP} (or set train.missing_sample: skip to "
                "train on the samples both hold)")
        notes.append(f"manifest_fingerprint differs (manifest {got}, store {prov.manifest_fingerprint}); "
                     "train.missing_sample: skip trains on the samples both hold")
    return notes


def check_samples_present(wf: Workflow, subset: str, stage: str, store: Path) -> int:
    """The stage's manifest samples absent from the store: MissingSampleError under
    train.missing_sample "error" (before launch, not inside a rank); returns the count."""
    col = subset_column(subset)
    m = read_manifest(wf.data.manifest, ["sample_id", "stage", col])
    ids = m.filter(pc.and_(pc.equal(m["stage"], stage), m[col]))["sample_id"]
    have = load_index(store).samples["sample_id"].combine_chunks().cast(ids.type)
    missing = pc.filter(ids, pc.invert(pc.is_in(ids, value_set=have))).to_pylist()
    if missing and wf.train.missing_sample != "skip":
        show = ", ".join(map(repr, missing[:_SHOW])) + (f", … (+{len(missing) - _SHOW} more)" if len(missing) > _SHOW else "")
        raise MissingSampleError(
            f"{len(missing)} of {len(ids)} {stage}/{subset} samples of manifest {wf.data.manifest} are not in cache "
            f"{store}: {show}. Re-run `alignkd teacher-dump` on this manifest, or set train.missing_sample: skip "
            "to train without them")
    return len(missing)


def check_token_hashes(wf: Workflow, subset: str, stage: str, store: Path) -> int:
    """Raise StoreMismatchError if a sample of this stage/subset is in the store with other
    tokens than the manifest's; returns the number of samples compared."""
    col = subset_column(subset)
    m = read_manifest(wf.data.manifest, ["sample_id", "token_hash", "stage", col])
    m = m.filter(pc.and_(pc.equal(m["stage"], stage), m[col])).select(["sample_id", "token_hash"])
    idx = load_index(store).samples.select(["sample_id", "token_hash"]).rename_columns(["sample_id", "store_hash"])
    j = m.join(idx, "sample_id", join_type="inner")
    bad = j.filter(pc.not_equal(j["token_hash"], j["store_hash"]))
    if bad.num_rows:
        rows = bad.slice(0, _SHOW).to_pylist()
        show = ", ".join(f"{r['sample_id']!r} (manifest {r['token_hash']}, store {r['store_hash']})" for r in rows)
        more = f", … (+{bad.num_rows - _SHOW} more)" if bad.num_rows > _SHOW else ""
        raise StoreMismatchError(
            f"cache {store}: {bad.num_rows} of {j.num_rows} {stage}/{subset} samples were dumped from other token ids "
            f"than manifest {wf.data.manifest} holds: {show}{more}. The manifest was rebuilt (tokenizer or "
            "template change?) after the dump: re-run `alignkd teacher-dump`, or point cache.dir at the matching store"
        )
    return j.num_rows


def count_trained_samples(wf: Workflow, subset: str, stage: str, store: Path | None) -> int:
    """The samples of one epoch of the stage, across ranks: the manifest rows `StageRows` keeps
    (stage, subset, train.<stage>.datasets) less, with a store, those it does not hold (what the
    loader drops under train.missing_sample "skip"). From the id columns alone, once per launch:
    the ranks no longer build a loader to count them."""
    m = read_manifest(wf.data.manifest, ["sample_id", "dataset", "stage", subset_column(subset)])
    ids = m.filter(stage_mask(m, wf, subset, stage))["sample_id"]
    if store is None:
        return len(ids)
    have = load_index(store).samples["sample_id"].combine_chunks().cast(ids.type)
    return int(pc.sum(pc.is_in(ids, value_set=have)).as_py() or 0)
