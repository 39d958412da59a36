"""Checks that refuse a run before any rank trains: the store's provenance (`check_store`) and,
here, every sample's token fingerprint against the manifest, read from the store's index (no
payload is read: a vectorised join of two string columns, seconds for millions of samples).

The per-sample check in the data loader stays (it also covers images and sizes), but it fires
only when a sample is reached — possibly hours into a run.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc

from cache_schema.index import load_index
from pipeline.data.contract import read_manifest, subset_column
from pipeline.workflow import Workflow
from student_train.data import StoreMismatchError

_SHOW = 5


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
