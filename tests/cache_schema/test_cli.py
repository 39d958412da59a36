"""`alignkd cache info/ls/show/verify/size-table` through typer's CliRunner on real stores."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cache_schema_testlib import TINY_CHUNKS, VOCAB, make_prov, write_unit
from typer.testing import CliRunner

from alignkd.cache_cmd import app
from cache_schema import CacheStore, Encoding

IDS = ["coco/0", "coco/1", "coco/2", "vg/0", "vg/1"]
runner = CliRunner()


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    prov = make_prov(Encoding(**TINY_CHUNKS), num_vision_tokens=9)  # 3×3 grid
    store = CacheStore.create_or_open(d / "c", prov)
    write_unit(store, "u0", IDS[:3], seed=0)
    write_unit(store, "u1", IDS[3:], seed=1)
    store.finalize(IDS)
    return d / "c"


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_info_and_ls_read_no_payload(store_path, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(store_path, bare)
    for chunk_dir in bare.glob("units/*/*/c"):  # info/ls must not need a single payload chunk
        shutil.rmtree(chunk_dir)
    res = _run("info", bare)
    assert res.exit_code == 0, res.output
    assert "teacher_fingerprint: teacher0" in res.output and "samples: 5   images: 2" in res.output
    assert "attn_first_tv" in res.output and "finalised: yes" in res.output
    d = json.loads(_run("info", store_path, "--json").output)
    assert d["samples"] == 5 and d["arrays"]["attn_first_tv"]["stored_bytes"] > 0
    res = _run("ls", bare, "--dataset", "vg")
    assert res.exit_code == 0 and "vg/0" in res.output and "coco/0" not in res.output and "(2 rows)" in res.output
    res = _run("ls", bare, "--unit", "u0", "--limit", "2")
    assert "coco/0" in res.output and "coco/2" not in res.output and "(2 rows)" in res.output


def _manifest(columns: dict) -> pa.Table:
    """Some manifest columns, stamped with the contract's version (readers refuse other versions)."""
    from pipeline.data.contract import MANIFEST_VERSION

    return pa.table(columns).replace_schema_metadata({"manifest_version": json.dumps(MANIFEST_VERSION)})


def test_show_with_tokenizer_png_and_manifest(store_path, tmp_path):
    from PIL import Image
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="w0")))
    tok.save_pretrained(tmp_path / "tok")
    Image.new("RGB", (40, 24), (10, 200, 30)).save(tmp_path / "img.png")
    pq.write_table(_manifest({"sample_id": IDS, "image_path": [str(tmp_path / "img.png")] * 5}), tmp_path / "m.parquet")

    res = _run("show", store_path, "coco/0", "--tokenizer", tmp_path / "tok", "--png", tmp_path / "a.png",
               "--image", tmp_path / "img.png")
    assert res.exit_code == 0, res.output
    assert "attn first.tv: [2," in res.output and "focus (3):" in res.output and "'w" in res.output
    assert Image.open(tmp_path / "a.png").size[0] > 100
    res = _run("show", store_path, "vg/0", "--png", tmp_path / "b.png", "--manifest", tmp_path / "m.parquet")
    assert res.exit_code == 0, res.output
    assert _run("show", store_path, "vg/0", "--png", tmp_path / "c.png").exit_code == 0
    # --manifest found the image and the heat map is drawn over it, unlike the bare one
    assert (tmp_path / "b.png").read_bytes() != (tmp_path / "c.png").read_bytes()
    res = _run("show", store_path, "nope/0")
    assert res.exit_code == 1 and "nope/0" in res.output


def test_verify_ok_then_fault(store_path, tmp_path):
    import shutil

    res = _run("verify", store_path)
    assert res.exit_code == 0 and "OK" in res.output, res.output
    pq.write_table(_manifest({"sample_id": IDS + ["coco/9"], "in_short": [True] * 5 + [False]}), tmp_path / "m.parquet")
    assert _run("verify", store_path, "--manifest", tmp_path / "m.parquet", "--subset", "short").exit_code == 0
    res = _run("verify", store_path, "--manifest", tmp_path / "m.parquet")
    assert res.exit_code == 1 and "coco/9" in res.output
    bad = tmp_path / "bad"
    shutil.copytree(store_path, bad)
    f = bad / "units" / "u1" / "topk_logprobs" / "c" / "0"
    raw = bytearray(f.read_bytes())
    raw[3] ^= 1
    f.write_bytes(bytes(raw))
    (bad / "staging" / "u7.deadbeef").mkdir()
    res = _run("verify", bad)
    assert res.exit_code == 1
    assert "FAULT" in res.output and "topk_logprobs" in res.output and "'vg/1'" in res.output
    assert "INCOMPLETE units (1): u7" in res.output


def test_size_table_quick_json(tmp_path):
    res = _run("size-table", "--quick", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / "size_table.json").read_text())
    assert set(d["targets"]) == {"attention", "logits", "vision"}
    for tgt, rows in d["targets"].items():
        assert d["defaults"][tgt] in rows and d["lossless"][tgt] in rows
        for r in rows.values():
            assert r["compression_ratio"] > 0 and r["ratio_vs_naive"] > 0 and r["errors"]
            if r["lossless"]:
                assert all(v == 0 or abs(v) < 1e-6 for v in r["errors"].values())
    assert d["naive_bytes_per_sample"]["total"] == 32 * 200 * 144 * 4 + 60 * 32000 * 2 + 144 * 4096 * 4
    assert set(d["projection"]) == {"short", "long"} and d["projection"]["short"]["samples"] == 3_610_000
    assert d["bytes_per_sample"]["default"] < d["bytes_per_sample"]["lossless"] < d["bytes_per_sample"]["naive"]
    assert "| option |" in (tmp_path / "size_table.md").read_text()
