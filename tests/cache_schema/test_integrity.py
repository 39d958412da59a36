"""Corruption on disk is detected by verify and by the reader, naming the sample and array;
provenance and coverage problems are refused with messages naming what differs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cache_schema_testlib import make_image, make_prov, write_unit

from cache_schema import (
    CacheReader,
    CacheStore,
    CacheVersionError,
    CoverageError,
    IntegrityError,
    NotFinalizedError,
    ProvenanceMismatch,
    verify_store,
)

IDS = ["a/0", "a/1", "a/2", "a/3"]


@pytest.fixture
def store(tmp_path):
    s = CacheStore.create_or_open(tmp_path / "c", make_prov())
    write_unit(s, "u0", IDS, seed=3)
    s.finalize(IDS)
    return s


def _flip(path, pos):
    raw = bytearray(path.read_bytes())
    raw[pos] ^= 0x10
    path.write_bytes(bytes(raw))


def test_flipped_byte_in_chunk_detected_by_verify_and_reader(store):
    shard = store.path / "units" / "u0" / "attn_first_tv" / "c" / "0"
    _flip(shard, 5)  # inside the first inner chunk: holds sample a/0's attention
    rep = verify_store(store.path)
    assert not rep.ok and rep.faults
    assert any("attn_first_tv" in f and "'a/0'" in f for f in rep.faults), rep.faults
    r = CacheReader(store.path)
    with pytest.raises(IntegrityError, match=r"sample 'a/0'.*attn_first_tv"):
        r.get("a/0")
    with pytest.raises(IntegrityError, match="a/0"):
        list(r.iter_samples(IDS, prefetch=1))


def test_missing_chunk_caught_by_per_sample_checksum(store):
    (store.path / "units" / "u0" / "topk_ids" / "c" / "0").unlink()  # zarr would return fill values
    with pytest.raises(IntegrityError, match=r"sample 'a/0'.*topk_ids.*checksum"):
        CacheReader(store.path).get("a/0")
    assert any("topk_ids" in f and "checksum" in f for f in verify_store(store.path).faults)


def test_corrupted_commit_record_and_index(store):
    rec = store.path / "units" / "u0" / "commit.json"
    text = rec.read_text()
    rec.write_text(text.replace('"a/1"', '"a/9"', 1))
    with pytest.raises(IntegrityError, match="u0.*CRC"):
        CacheReader(store.path).get("a/0")
    rec.write_text(text)
    _flip(store.path / "index" / "samples.arrow", 100)
    with pytest.raises(NotFinalizedError, match="samples.arrow"):
        CacheReader(store.path)


def test_provenance_mismatch_names_fields(store, tmp_path):
    other = make_prov(teacher_fingerprint="teacherX", tokenizer_fingerprint="tokX")
    with pytest.raises(ProvenanceMismatch) as e:
        CacheStore.create_or_open(store.path, other)
    msg = str(e.value)
    assert "teacher_fingerprint: expected 'teacherX', got 'teacher0'" in msg
    assert "tokenizer_fingerprint: expected 'tokX', got 'tok0'" in msg
    assert set(e.value.diffs) == {"teacher_fingerprint", "tokenizer_fingerprint"}
    # only created_by/created_at may differ on reopen
    CacheStore.create_or_open(store.path, make_prov(created_by="other cmd", created_at="2030-01-01"))
    with pytest.raises(ProvenanceMismatch, match="logits_topk: expected 8, got 4"):
        CacheReader(store.path, expect={"logits_topk": 8, "teacher_fingerprint": "teacher0"})
    with pytest.raises(ProvenanceMismatch, match="encoding.attn: expected 'f16', got 'f32'"):
        CacheReader(store.path, expect={"encoding": {"attn": "f16"}})
    with pytest.raises(ValueError, match="unknown provenance field"):
        CacheReader(store.path, expect={"teacher": "x"})
    CacheReader(store.path, expect={"teacher_fingerprint": "teacher0", "templates": ["v1"], "attn_blocks": ("first.tv",)})


def test_unknown_schema_version_refused(store):
    root = store.path / "zarr.json"
    meta = json.loads(root.read_text())
    meta["attributes"]["alignkd_cache"]["schema_version"] = 99
    root.write_text(json.dumps(meta))
    with pytest.raises(CacheVersionError, match="schema_version expected 2, got 99"):
        CacheReader(store.path)
    with pytest.raises(CacheVersionError, match="expected 2, got 99"):
        CacheStore.create_or_open(store.path, make_prov())


def test_version_1_store_refused_by_name(store):
    """A store written before the projector recompute (schema 1) is refused with the fix."""
    root = store.path / "zarr.json"
    meta = json.loads(root.read_text())
    meta["attributes"]["alignkd_cache"]["schema_version"] = 1
    root.write_text(json.dumps(meta))
    with pytest.raises(CacheVersionError, match=r"expected 2, got 1 \(version 1: .*re-dump the teacher"):
        CacheReader(store.path)


def test_finalize_coverage_errors(tmp_path):
    s = CacheStore.create_or_open(tmp_path / "c", make_prov())
    write_unit(s, "u0", ["a/0", "a/1", "a/2"], seed=0)
    write_unit(s, "u1", ["a/2", "z/9"], seed=1)  # a/2 twice; z/9 not expected
    with pytest.raises(CoverageError) as e:
        s.finalize(["a/0", "a/1", "a/2", "a/3"])
    msg = str(e.value)
    assert "1 sample id(s) stored more than once: 'a/2' in units ['u0', 'u1']" in msg
    assert "1 of 4 expected sample(s) missing: 'a/3'" in msg
    assert "1 stored sample(s) not expected: 'z/9'" in msg
    assert "referenced but never stored" not in msg

    t = CacheStore.create_or_open(tmp_path / "d", make_prov())
    rng = np.random.default_rng(0)
    write_unit(t, "u0", ["a/0", "a/1"], seed=0)  # stores image u0-img0
    with t.unit_writer("u1") as w:
        w.add_image("u0-img0", make_image(rng, t.provenance))  # the same image again
    from cache_schema_testlib import make_sample
    with t.unit_writer("u2") as w:
        w.add_sample(make_sample("a/2", rng, t.provenance, image_hash="never-stored"))
    with pytest.raises(CoverageError) as e:
        t.finalize(["a/0", "a/1", "a/2"])
    assert "image hash(es) stored more than once" in str(e.value) and "u0-img0" in str(e.value)
    assert "referenced but never stored: 'never-stored' (sample 'a/2')" in str(e.value)


def test_unit_committed_after_finalize_makes_index_stale(store):
    write_unit(store, "u9", ["b/0"], seed=9)
    with pytest.raises(NotFinalizedError, match=r"stale.*u9"):
        CacheReader(store.path)
    store.finalize(IDS + ["b/0"])
    assert len(CacheReader(store.path)) == 5
