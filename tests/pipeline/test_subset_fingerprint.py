"""The manifest fingerprint student-train checks must be the one teacher-dump records."""

import json

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.contract import MANIFEST_VERSION
from pipeline.fingerprint import manifest_subset_fingerprint
from teacher_dump.manifest import subset_fingerprint as dump_fingerprint


def test_manifest_subset_fingerprint_equals_the_dumps(tmp_path):
    t = pa.table({"sample_id": ["b", "a", "c", "d"], "token_hash": ["t2", "t1", "t3", "t4"],
                  "image_hash": ["i2", None, "i3", "i4"], "in_short": [True, True, False, True]})
    pq.write_table(t.replace_schema_metadata({"manifest_version": json.dumps(MANIFEST_VERSION)}), tmp_path / "m.parquet")
    short = t.filter(t["in_short"])
    assert manifest_subset_fingerprint(tmp_path / "m.parquet", "short") == dump_fingerprint(short)
    assert manifest_subset_fingerprint(tmp_path / "m.parquet", "short") != dump_fingerprint(t)
