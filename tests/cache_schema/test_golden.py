"""Golden: the self-description a store carries. Any change here is a format change: bump
cache_schema.provenance.SCHEMA_VERSION, update cache_schema/README.md, then this literal."""

from __future__ import annotations

import json

from cache_schema_testlib import make_prov, write_unit

from cache_schema import SCHEMA_VERSION, CacheStore, Provenance
from cache_schema.codecs import codec_chain
from cache_schema.records import root_meta

PROV = Provenance(teacher_fingerprint="t", teacher_config_fingerprint="c", tokenizer_fingerprint="k",
                  manifest_fingerprint="m", templates=("plain", "v1"), subset="short", max_length=2048,
                  num_vision_tokens=144, teacher_heads=32, teacher_hidden_size=4096, vocab_size=32000,
                  created_by="cmd", created_at="2025-01-01T00:00:00+00:00")


def _arr(dtype, codec, chunk, shard, kind="sample"):
    return {"kind": kind, "dtype": dtype, "codec": codec, "chunk_elems": chunk, "shard_elems": shard}


GOLDEN = {
    "format": "alignkd-teacher-cache",
    "schema_version": 2,
    "provenance": {
        "teacher_fingerprint": "t", "teacher_config_fingerprint": "c", "tokenizer_fingerprint": "k",
        "manifest_fingerprint": "m", "templates": ["plain", "v1"], "subset": "short", "max_length": 2048,
        "num_vision_tokens": 144, "teacher_heads": 32, "teacher_hidden_size": 4096, "vocab_size": 32000,
        "logits_topk": 64, "focus_k": 16, "attn_blocks": ["first.tv"],
        "projector_tokens": "stored", "vision_tower_fingerprint": "", "attention": "stored",
        "encoding": {"attn": "u8sqrt", "logprobs": "f16", "vision": "f16", "attn_codec": "zstd:3",
                     "logits_codec": "blosc:zstd:3:shuffle", "vision_codec": "blosc:zstd:3:shuffle",
                     "chunk_bytes_large": 1048576, "chunk_bytes_small": 65536, "shard_chunks": 64},
        "schema_version": 2, "created_by": "cmd", "created_at": "2025-01-01T00:00:00+00:00",
    },
    "layout": {
        "attn_first_tv": _arr("|u1", "zstd:3", 1048576, 67108864),
        "attn_first_tv_scale": _arr("<f4", "blosc:zstd:3:shuffle", 16384, 1048576),
        "focus": _arr("<u2", "blosc:zstd:3:shuffle", 32768, 2097152),
        "topk_ids": _arr("<u2", "blosc:zstd:3:shuffle", 32768, 2097152),
        "topk_logprobs": _arr("<f2", "blosc:zstd:3:shuffle", 32768, 2097152),
        "tail_logmass": _arr("<f4", "blosc:zstd:3:shuffle", 16384, 1048576),
        "image_tokens": _arr("<f2", "blosc:zstd:3:shuffle", 524288, 33554432, kind="image"),
    },
    "projector": None,
    "first_layer": None,
}


def test_root_metadata_golden():
    assert SCHEMA_VERSION == 2
    assert json.loads(json.dumps(root_meta(PROV))) == GOLDEN


def test_recompute_store_golden(tmp_path):
    """projector_tokens "recompute": no image_tokens array; the teacher projector's tensors are
    listed in the root (shape + CRC-32) and kept under <store>/projector/."""
    from dataclasses import replace

    import numpy as np

    from cache_schema import CacheReader
    from cache_schema.records import crc32

    prov = replace(PROV, projector_tokens="recompute", vision_tower_fingerprint="v")
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    CacheStore.create_or_open(tmp_path / "c", prov, projector={"mlp.0.weight": w})
    meta = json.loads((tmp_path / "c" / "zarr.json").read_text())["attributes"]["alignkd_cache"]
    want = dict(GOLDEN, provenance=dict(GOLDEN["provenance"], projector_tokens="recompute",
                                        vision_tower_fingerprint="v", created_at=meta["provenance"]["created_at"],
                                        created_by=meta["provenance"]["created_by"]),
                layout={k: v for k, v in GOLDEN["layout"].items() if k != "image_tokens"},
                projector={"mlp.0.weight": {"shape": [2, 3], "crc32": crc32(w)}}, first_layer=None)
    assert meta == want
    assert (tmp_path / "c" / "projector" / "mlp.0.weight" / "zarr.json").is_file()
    CacheStore.open(tmp_path / "c").finalize([])
    got = CacheReader(tmp_path / "c").teacher_projector()
    assert list(got) == ["mlp.0.weight"] and np.array_equal(got["mlp.0.weight"], w)


def test_codec_chains_golden():
    assert [c.to_dict() for c in codec_chain("blosc:zstd:3:shuffle", 2)] == [
        {"name": "blosc", "configuration": {"typesize": 2, "cname": "zstd", "clevel": 3, "shuffle": "shuffle",
                                            "blocksize": 0}},
        {"name": "crc32c"},
    ]
    assert [c.to_dict() for c in codec_chain("zstd:3", 1)] == [
        {"name": "zstd", "configuration": {"level": 3, "checksum": False}}, {"name": "crc32c"}]


def test_commit_record_and_zarr_metadata_golden(tmp_path):
    store = CacheStore.create_or_open(tmp_path / "c", make_prov())
    write_unit(store, "u0", ["a/0", "a/1"], seed=0)
    udir = tmp_path / "c" / "units" / "u0"
    rec = json.loads((udir / "commit.json").read_text())
    assert sorted(rec) == ["crc32", "created_at", "format", "images", "lengths", "n_images", "n_samples",
                           "provenance_crc32", "record_crc32", "samples", "schema_version", "unit_id", "writer"]
    assert sorted(rec["samples"]) == ["cols_attn_first_tv", "image_hash", "n_focus", "n_resp", "n_text",
                                      "rows_attn_first_tv", "sample_id", "token_hash"]
    meta = json.loads((udir / "topk_logprobs" / "zarr.json").read_text())
    assert meta["node_type"] == "array" and meta["zarr_format"] == 3 and meta["data_type"] == "float32"
    shard = meta["codecs"][0]
    assert shard["name"] == "sharding_indexed"
    assert [c["name"] for c in shard["configuration"]["codecs"]] == ["bytes", "blosc", "crc32c"]
    assert [c["name"] for c in shard["configuration"]["index_codecs"]] == ["bytes", "crc32c"]
