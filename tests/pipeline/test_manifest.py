"""Manifest builder on small generated data: subsets, rejects, stable ids, atomic outputs, CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer
from typer.testing import CliRunner

from pipeline.data import ManifestError
from pipeline.data.manifest import build_manifest, read_manifest_meta, report_paths
from pipeline.fingerprint import token_fingerprint, tokenizer_fingerprint
from pipeline.templates import encode_conversation
from pipeline.workflow import load_workflow, with_overrides
from tests.pipeline.data_fixtures import (
    caption,
    make_tokenizer,
    qa,
    write_corrupt_png,
    write_json,
    write_png,
    write_workflow,
)

SUBSETS = {"short": 64, "long": 128}
N_VISION = 16
LONG_ANSWER = "The square is red. " * 12  # ~60 tokens: pushes a sample out of Short


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def finetune_records() -> tuple[list, dict[int, str]]:
    """Good records of every shape, and bad ones; returns (records, {index: expected reason})."""
    good = [
        qa("q1", "red.png", [("What colour is the square?", "The square is red.")]),
        qa("q2", None, [("Where is the triangle?", "The triangle is at the top left.")]),  # text only
        qa("q3", "blue.png", [("How many circles are there?", "There are two circles.")] * 2, image_turn=1),
        qa("q4", "red.png", [("What colour is the square?", LONG_ANSWER)]),  # Long only
        qa("q5", "blue.png", [("What colour is the square?", LONG_ANSWER * 2)]),  # over every limit
        qa("q1", "blue.png", [("Duplicate id?", "yes")]),  # -> q1#1
        {k: v for k, v in qa("x", "red.png", [("No id?", "no")]).items() if k != "id"},  # -> @index
    ]
    bad = {
        "not_a_record": ["a string"],
        "missing_conversations": [{"id": "b1", "image": "red.png"}],
        "empty_turn": [qa("b2", None, [("q", "")])],
        "not_alternating": [{"id": "b3", "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}],
        "missing_turns": [{"id": "b4", "conversations": []}],
        "placeholder_without_image": [qa("b5", None, [("<image>\nq", "a")])],
        "image_without_placeholder": [{"id": "b6", "image": "red.png", "conversations": qa("", None, [("q", "a")])["conversations"]}],
        "multiple_images": [qa("b7", "red.png", [("<image> q", "a")])],
        "image_missing": [qa("b8", "nowhere.png", [("q", "a")])],
        "image_corrupt": [qa("b9", "corrupt.png", [("q", "a")]), qa("b11", "garbage.png", [("q", "a")])],
        "image_unreadable": [qa("b12", "a_directory", [("q", "a")])],
        "bad_image_field": [{**qa("b13", None, [("<image> q", "a")]), "image": 5}],
        "bad_id": [qa({"not": "an id"}, None, [("q", "a")])],
        # an existing image outside image_root (tests write it beside the root), relative and absolute
        "image_outside_root": [qa("b14", "../outside.png", [("q", "a")]), qa("b15", "/etc/hostname", [("q", "a")])],
    }
    records, expected = list(good), {}
    for reason, recs in bad.items():
        for r in recs:
            expected[len(records)] = reason
            records.append(r)
    return records, expected


@pytest.fixture()
def world(tmp_path, tokenizer_dir):
    img = tmp_path / "images"
    write_png(img / "red.png", (200, 30, 30))
    write_png(tmp_path / "outside.png", (1, 2, 3))
    write_png(img / "blue.png", (30, 30, 200))
    write_corrupt_png(img / "corrupt.png")
    (img / "garbage.png").write_bytes(b"not an image at all")
    (img / "a_directory").mkdir()
    records, expected = finetune_records()
    ft = tmp_path / "finetune.json"
    # Undecodable bytes inside one record: it is rejected, the file is still read.
    body = [json.dumps(r).encode() for r in records]
    expected[len(body)] = "non_utf8"
    body.append(b'{"id": "b10", "conversations": [{"from": "human", "value": "caf\xe9?"}, {"from": "gpt", "value": "a"}]}')
    ft.write_bytes(b"[\n" + b",\n".join(body) + b"\n]")
    pt = write_json(tmp_path / "pretrain.json", [caption(f"c{i}", "red.png" if i % 2 else "blue.png",
                                                         "A red square and a blue circle.") for i in range(5)])
    datasets = [
        {"name": "toy_caption", "json": str(pt), "image_root": str(img), "template": "plain", "stage": "pretrain"},
        {"name": "toy_qa", "json": str(ft), "image_root": str(img), "template": "v1", "stage": "finetune"},
    ]
    wf_path = write_workflow(tmp_path / "wf.yaml", datasets, tokenizer_dir, tmp_path / "out", SUBSETS, N_VISION)
    return {"wf": wf_path, "records": records, "expected": expected, "img": img, "out": tmp_path / "out"}


def build(wf_path: Path, **overrides):
    wf = with_overrides(load_workflow(wf_path), {f"data.{k}": v for k, v in overrides.items()})
    return wf, build_manifest(wf, command="test", progress=False)


def test_subsets_are_nested_and_within_their_limits(world):
    wf, report = build(world["wf"])
    t = pq.read_table(wf.data.manifest).to_pylist()
    assert t, "empty manifest"
    for row in t:
        for s, limit in SUBSETS.items():
            assert row[f"in_{s}"] == (row["embedded_len"] <= limit)  # dropped, never truncated
        assert not row["in_short"] or row["in_long"]  # Short ⊆ Long
    ids = {r["sample_id"]: r for r in t}
    assert not ids["toy_qa/q4"]["in_short"] and ids["toy_qa/q4"]["in_long"]
    assert not ids["toy_qa/q5"]["in_long"]  # over every limit: kept as a row, in no subset
    qa_counts = next(c for c in report.datasets if c.name == "toy_qa")
    assert qa_counts.in_subset == {s: sum(r[f"in_{s}"] for r in t if r["dataset"] == "toy_qa") for s in SUBSETS}
    assert qa_counts.too_long == 1 and qa_counts.valid == 7 and qa_counts.records == len(world["records"]) + 1
    # ... and listed by record in the rejects file (it was only counted), not counted as rejected
    listed = [json.loads(line) for line in Path(wf.data.rejects).read_text().splitlines()]
    too_long = [r for r in listed if r["reason"] == "too_long"]
    assert [(r["sample_id"], r["record_id"]) for r in too_long] == [("toy_qa/q5", "q5")], too_long
    detail = too_long[0]["detail"]
    assert f"embedded length {ids['toy_qa/q5']['embedded_len']} " in detail and f"long {SUBSETS['long']}" in detail, detail
    assert "too_long" not in qa_counts.rejected


def test_rows_match_the_template_and_the_files(world, tokenizer_dir):
    wf, _ = build(world["wf"])
    rows = {r["sample_id"]: r for r in pq.read_table(wf.data.manifest).to_pylist()}
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    rec = world["records"][0]
    enc = encode_conversation(rec["conversations"], "v1", tok, has_image=True)
    row = rows["toy_qa/q1"]
    assert (row["input_ids"], row["labels"]) == (enc.input_ids, enc.labels)
    assert row["token_hash"] == token_fingerprint(enc.input_ids, enc.labels)
    assert row["embedded_len"] == len(enc.input_ids) - 1 + N_VISION
    assert row["n_response"] == sum(x != -100 for x in enc.labels)
    assert row["image_path"] == str((world["img"] / "red.png").resolve())
    assert row["image_hash"] == hashlib.sha256((world["img"] / "red.png").read_bytes()).hexdigest()[:16]
    text_only = rows["toy_qa/q2"]
    assert (text_only["image"], text_only["image_path"], text_only["image_hash"], text_only["n_text_after_image"]) == ("", "", "", 0)
    assert {"toy_qa/q1#1", "toy_qa/@6"} <= set(rows)  # duplicate id, record without id
    assert rows["toy_caption/c0"]["template"] == "plain" and rows["toy_caption/c0"]["stage"] == "pretrain"


def test_every_rejected_record_is_in_the_rejects_file_with_its_reason(world):
    wf, report = build(world["wf"])
    listed = [json.loads(line) for line in Path(wf.data.rejects).read_text().splitlines()]
    rejects = [r for r in listed if r["reason"] != "too_long"]  # too_long lines are rows in no subset
    got = {r["record_index"]: r["reason"] for r in rejects if r["dataset"] == "toy_qa"}
    assert got == world["expected"]
    assert all(r["detail"] for r in rejects)
    corrupt = next(r for r in rejects if r["reason"] == "image_corrupt")
    assert corrupt["record_id"] == "b9" and "corrupt.png" in corrupt["detail"]
    # every record is either a row or a reject, exactly once
    rows = pq.read_table(wf.data.manifest, columns=["dataset", "record_index"]).to_pylist()
    kept = {r["record_index"] for r in rows if r["dataset"] == "toy_qa"}
    assert kept.isdisjoint(got) and len(kept) + len(got) == len(world["records"]) + 1
    assert {r["record_index"] for r in listed if r["reason"] == "too_long" and r["dataset"] == "toy_qa"} <= kept
    qa_counts = next(c for c in report.datasets if c.name == "toy_qa")
    assert qa_counts.rejected == {reason: list(world["expected"].values()).count(reason) for reason in set(world["expected"].values())}


def test_ids_and_tokens_are_stable_across_builds_and_worker_counts(world):
    wf, _ = build(world["wf"])
    first = pq.read_table(wf.data.manifest)
    _, _ = build(world["wf"], num_workers=2, batch_size=3)  # the process-pool path, other batching
    second = pq.read_table(wf.data.manifest)
    assert first.column("sample_id").to_pylist() == second.column("sample_id").to_pylist()
    assert first.column("token_hash").to_pylist() == second.column("token_hash").to_pylist()
    assert first.equals(second)


def test_manifest_schema_metadata_and_count_tables(world, tokenizer_dir):
    wf, report = build(world["wf"])
    schema = pq.read_schema(wf.data.manifest)
    expected = {
        "sample_id": pa.string(), "dataset": pa.string(), "stage": pa.string(), "template": pa.string(),
        "record_index": pa.int64(), "image": pa.string(), "image_path": pa.string(), "image_hash": pa.string(),
        "input_ids": pa.list_(pa.int32()), "labels": pa.list_(pa.int32()), "token_hash": pa.string(),
        "embedded_len": pa.int32(), "n_text_after_image": pa.int32(), "n_response": pa.int32(),
        "in_short": pa.bool_(), "in_long": pa.bool_(),
    }
    assert {f.name: f.type for f in schema} == expected and schema.names == list(expected)
    meta = read_manifest_meta(wf.data.manifest)
    assert meta["tokenizer_fingerprint"] == tokenizer_fingerprint(tokenizer_dir)
    assert (meta["num_vision_tokens"], meta["subsets"], meta["build_command"]) == (N_VISION, SUBSETS, "test")
    md, js = report_paths(wf.data.manifest)
    assert md.read_text() == report.markdown() and "| toy_qa | finetune | v1 |" in md.read_text()
    assert json.loads(js.read_text())["total"]["valid"] == pq.read_metadata(wf.data.manifest).num_rows


def test_manifest_reads_with_pandas(world):
    pd = pytest.importorskip("pandas")
    wf, _ = build(world["wf"])
    df = pd.read_parquet(wf.data.manifest)
    assert len(df) == pq.read_metadata(wf.data.manifest).num_rows and df["in_short"].dtype == bool


@pytest.mark.parametrize("content", [None, b'{"id": "not a list"}', b'[{"id": "a", "conversations": []}, {"id": "b", '])
def test_an_unreadable_file_fails_the_build_and_keeps_the_old_outputs(world, content):
    wf, _ = build(world["wf"])
    before = Path(wf.data.manifest).read_bytes()
    ft = Path(wf.data.datasets[1].json)
    if content is None:
        ft.unlink()
    else:
        ft.write_bytes(content)
    with pytest.raises(ManifestError, match=str(ft)):
        build(world["wf"])
    assert Path(wf.data.manifest).read_bytes() == before  # untouched: no half manifest
    assert not [p for p in world["out"].iterdir() if ".tmp-" in p.name]


def test_cli_builds_the_manifest(world):
    from alignkd.cli import app

    result = CliRunner().invoke(app, ["data", "build", "--workflow", str(world["wf"]), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "| toy_qa | finetune | v1 |" in result.output
    assert pq.read_metadata(world["out"] / "manifest.parquet").num_rows == 5 + 7
    bad = CliRunner().invoke(app, ["data", "build", "--workflow", str(world["out"] / "missing.yaml")])
    assert bad.exit_code == 1 and "workflow file not found" in bad.output


@pytest.mark.parametrize("mode", ["load", "verify"])
def test_image_check_modes_reject_broken_files(world, mode):
    wf, report = build(world["wf"], image_check=mode)
    rejects = [json.loads(line) for line in Path(wf.data.rejects).read_text().splitlines()]
    reasons = {r["record_id"]: r["reason"] for r in rejects if isinstance(r["record_id"], str)}
    assert reasons["b11"] == "image_corrupt"  # not an image at all
    assert reasons["b9"] == "image_corrupt"  # truncated PNG: verify follows the chunk CRCs to IEND


def test_invalid_data_section_lists_every_problem(world):
    wf = load_workflow(world["wf"])
    ds = wf.data.datasets  # a duplicate name, an empty subset
    wf = with_overrides(wf, {"data.datasets": [ds[0], dataclasses.replace(ds[1], name=ds[0].name), *ds[2:]],
                             "data.subsets": {"short": 0}})
    # and a template the load refuses: set past that check on purpose, the builder checks it too
    object.__setattr__(wf.data.datasets[1], "template", "llama_2")
    with pytest.raises(ManifestError) as exc:
        build_manifest(wf, progress=False)
    msg = str(exc.value)
    assert "unknown template 'llama_2'" in msg and "unique" in msg and "positive limits" in msg


def test_a_read_only_output_directory_is_one_line_and_the_previous_manifest_survives(world, tmp_path, capsys, tiny_fs):
    # a cause outside the program (issue 15 item 6): the manifest's directory is on a read-only
    # filesystem (the tmpfs remounted read-only: root ignores permission bits, not a ro mount)
    import subprocess

    from alignkd.cli import app

    ro = tiny_fs
    text = Path(world["wf"]).read_text()
    for name in ("manifest.parquet", "manifest.rejects.jsonl"):
        text = text.replace(str(world["out"] / name), str(ro / name))
    p = tmp_path / "ro_wf.yaml"
    p.write_text(text)
    build(p)  # a first, good build on the writable mount
    before = (ro / "manifest.parquet").read_bytes()
    subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    capsys.readouterr()
    with pytest.raises(SystemExit) as ex:
        app(["data", "build", "--workflow", str(p), "--no-progress"], prog_name="alignkd")
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert ex.value.code == 1 and len(err) == 1 and err[0].startswith("error: "), err
    assert str(ro) in err[0] and "read-only" in err[0], err
    assert (ro / "manifest.parquet").read_bytes() == before  # nothing already written is lost
