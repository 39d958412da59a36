"""The manifest is a contract (pipeline/data/contract.py): one definition of its columns and version,
and every reader of every phase goes through it, so a manifest of another version is refused by name."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.contract import (
    COLUMN_NAMES,
    MANIFEST_VERSION,
    ManifestFormatError,
    manifest_schema,
    read_manifest,
    read_manifest_meta,
)
from pipeline.preflight import manifest_counts
from pipeline.workflow import Workflow, with_overrides
from student_train.data.manifest import StageRows
from teacher_dump.manifest import read_subset

REPO = Path(__file__).resolve().parents[2]


def _write(path: Path, version: str | None, subsets=("short", "long"), drop: str = "") -> Path:
    schema = manifest_schema(list(subsets))
    row = {"sample_id": "d/0", "dataset": "d", "stage": "finetune", "template": "v1", "record_index": 0,
           "image": "a.png", "image_path": "/x/a.png", "image_hash": "h", "input_ids": [1, -200, 5],
           "labels": [-100, -100, 5], "token_hash": "t", "embedded_len": 18, "n_text_after_image": 1,
           "n_response": 1, **{f"in_{s}": True for s in subsets}}
    table = pa.Table.from_pylist([row], schema=schema)
    if drop:
        table = table.drop_columns([drop])
    meta = {"subsets": json.dumps({s: 512 for s in subsets})}
    if version is not None:
        meta["manifest_version"] = json.dumps(version)
    pq.write_table(table.replace_schema_metadata(meta), path)
    return path


def _readers(path: Path):
    wf = with_overrides(Workflow(), {"data.manifest": str(path)})
    return {
        "read_manifest_meta": lambda: read_manifest_meta(path),
        "teacher_dump.read_subset": lambda: read_subset(path, "short"),
        "student_train.StageRows": lambda: StageRows(wf, "short", "finetune"),
        "pipeline.preflight.manifest_counts": lambda: manifest_counts(path, ["short"]),
    }


def test_every_phase_reads_a_current_manifest(tmp_path):
    p = _write(tmp_path / "m.parquet", MANIFEST_VERSION)
    for read in _readers(p).values():
        read()  # no error
    assert read_manifest(p, ["sample_id", "in_short"]).num_rows == 1
    assert read_subset(p, "short").table.num_rows == 1


@pytest.mark.parametrize("version", ["0", "2", None])
def test_every_phase_refuses_another_version_by_name(tmp_path, version):
    p = _write(tmp_path / "m.parquet", version)
    found = "none" if version is None else repr(version)
    for name, read in _readers(p).items():
        with pytest.raises(ManifestFormatError, match=rf"manifest {re.escape(str(p))} has version {re.escape(found)}.*"
                                                      rf"reads version '{MANIFEST_VERSION}'.*alignkd data build"):
            read()


def test_missing_file_column_and_unknown_column_are_clear(tmp_path):
    with pytest.raises(ManifestFormatError, match="not found"):
        read_manifest(tmp_path / "none.parquet", ["sample_id"])
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ManifestFormatError, match="not a readable parquet file"):
        read_manifest_meta(tmp_path / "junk.parquet")
    p = _write(tmp_path / "m.parquet", MANIFEST_VERSION, drop="token_hash")
    with pytest.raises(ManifestFormatError, match=r"lacks column\(s\) \['token_hash'\]"):
        read_subset(p, "short")
    with pytest.raises(ManifestFormatError, match=r"lacks column\(s\) \['in_tiny'\].*subsets it has: \['short', 'long'\]"):
        read_manifest(p, ["sample_id", "in_tiny"])
    with pytest.raises(KeyError, match="not in the contract"):  # a reader's typo is a bug, caught at once
        read_manifest(p, ["sampleid"])


def test_the_builder_writes_the_contract_schema_and_version():
    # the builder takes its schema from the contract (no second column list to drift)
    from pipeline.data import records

    assert records.manifest_schema is manifest_schema
    assert manifest_schema(["short"]).names == [*COLUMN_NAMES, "in_short"]


def test_no_module_reads_the_manifest_around_the_contract():
    # every parquet read in the phases, the core and the CLI goes through pipeline/data/contract.py
    # (cache_schema reads its own index, not the manifest, and is not scanned)
    direct = re.compile(r"\bpq\.read_(table|schema|metadata)\(|read_parquet\(|ParquetFile\(")
    offenders = []
    for pkg in ("pipeline", "teacher_dump", "student_train", "alignkd"):
        for f in (REPO / pkg).rglob("*.py"):
            if f.name != "contract.py" and direct.search(f.read_text()):
                offenders.append(str(f.relative_to(REPO)))
    assert not offenders, f"read the manifest through pipeline.data.contract: {offenders}"
