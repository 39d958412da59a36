"""Inputs are checked before Ray starts: every problem at once, each naming the field and the fix."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from pipeline.workflow import load_workflow, with_overrides
from teacher_dump.run import dump
from teacher_dump.validate import DumpInputError, check_inputs
from tests.teacher_dump.dumplib import workflow


def test_dry_run_prints_the_plan_and_writes_nothing(dump_world, tmp_path):
    wf = workflow(tmp_path, "dry", dump_world.world, manifest=dump_world.root / "manifest.parquet")
    job = check_inputs(load_workflow(wf), "short")
    lines: list[str] = []
    assert dump(job, dry_run=True, log=lines.append) is None
    text = "\n".join(lines)
    n = job.rows.table.num_rows
    assert f"samples {n}" in text and "unique images" in text and "units" in text
    assert "projected size before compression" in text and "total" in text and "(0 complete" in text
    assert not job.store_path.exists()


def test_every_input_problem_is_reported_at_once(dump_world, tmp_path):
    # a manifest with one image moved away, and a teacher whose projector emits 16 tokens, not 64
    table = pq.read_table(dump_world.root / "manifest.parquet")
    paths = table.column("image_path").to_pylist()
    i = next(k for k, h in enumerate(table.column("image_hash").to_pylist()) if h)
    paths[i] = str(tmp_path / "gone.png")
    table = table.set_column(table.schema.get_field_index("image_path"), "image_path", [paths])
    pq.write_table(table, tmp_path / "m.parquet")
    teacher = tmp_path / "teacher"
    shutil.copytree(dump_world.world / "teacher_init", teacher)
    cfg = json.loads((teacher / "config.json").read_text())
    cfg["mm_projector_grid"] = 4
    (teacher / "config.json").write_text(json.dumps(cfg))
    wf = load_workflow(workflow(tmp_path, "bad", dump_world.world, manifest=tmp_path / "m.parquet",
                                dump={"dtype": "float16", "unit_size": 0}))
    wf = with_overrides(wf, {"models.teacher": str(teacher)})
    with pytest.raises(DumpInputError) as err:
        check_inputs(wf, "short")
    msg = str(err.value)
    for needle in ("gone.png", "emits 16 vision tokens", "num_vision_tokens=64", "dump.dtype=float16 needs GPU",
                   "dump.unit_size=0"):
        assert needle in msg, msg


def test_manifest_from_another_tokenizer_is_refused(dump_world, tmp_path):
    tok = tmp_path / "tok"
    shutil.copytree(dump_world.world / "tokenizer", tok)
    (tok / "tokenizer_config.json").write_text((tok / "tokenizer_config.json").read_text().replace("}", ', "x": 1}', 1))
    wf = load_workflow(workflow(tmp_path, "tok", dump_world.world, manifest=dump_world.root / "manifest.parquet"))
    wf = with_overrides(wf, {"data.tokenizer": str(tok)})
    with pytest.raises(DumpInputError, match="rebuild the manifest with the teacher's tokenizer"):
        check_inputs(wf, "short")


def test_resume_into_a_store_of_other_provenance_is_refused(dump_world, tmp_path):
    base = workflow(tmp_path, "prov", dump_world.world, manifest=dump_world.root / "manifest.parquet")
    job = check_inputs(load_workflow(base), "short")
    from teacher_dump.run import open_store

    open_store(job)  # an earlier run's (empty) store
    assert check_inputs(load_workflow(base), "short").resume
    other = with_overrides(load_workflow(base), {"cache.logits_topk": 8, "cache.attn_dtype": "float32"})
    with pytest.raises(DumpInputError) as err:
        check_inputs(other, "short")
    msg = str(err.value)
    # "expected" = this run's value, "got" = the store's
    assert "logits_topk: expected 8, got 16" in msg and "encoding.attn" in msg and str(job.store_path) in msg


def test_cache_encoding_choices_at_load_are_the_ones_the_dump_maps():
    # pipeline (the core) may not import teacher_dump: the accepted names are spelled in both;
    # this keeps them one list (a name only the loader knows would pass load and fail the dump)
    import typing

    from pipeline import workflow as w
    from teacher_dump import validate as v

    for literal, table in ((w.AttnDtype, v._ATTN), (w.LogprobDtype, v._LOGPROB), (w.VisionDtype, v._VISION)):
        assert set(typing.get_args(literal)) == set(table) | set(table.values()), literal
    for c in typing.get_args(w.Compressor):  # every compressor the loader accepts encodes
        v.encoding_from_cache(w.CacheConfig(compressor=c))
