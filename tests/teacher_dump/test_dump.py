"""End to end on a real local Ray cluster: the store verifies, covers the subset exactly, and holds
what an independent eager run of the teacher computes; bad samples are recorded, not fatal."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from cache_schema import CacheReader, verify_store
from pipeline.models import MobileVLM, preprocess_image
from pipeline.positions import sample_index
from pipeline.workflow import load_workflow, with_overrides
from teacher_dump.run import dump, plan_job
from teacher_dump.validate import DumpInputError, check_inputs
from tests.teacher_dump.dumplib import workflow

pytestmark = pytest.mark.slow


def test_store_verifies_and_covers_the_subset_exactly(reference):
    ids = reference.plan.sample_ids()
    rep = verify_store(reference.store, expected_sample_ids=ids)
    assert rep.ok, rep.faults
    assert reference.report.failures == {}
    r = CacheReader(reference.store, expect={"subset": "short", "teacher_fingerprint": reference.job.provenance.teacher_fingerprint})
    assert sorted(r.sample_ids) == sorted(ids) and len(ids) == reference.job.rows.table.num_rows
    # projector tokens once per unique image: finalize refuses duplicates, so count them
    hashes = set(reference.job.rows.table.column("image_hash").to_pylist()) - {""}
    assert reference.report.finalize.n_images == len(hashes) == reference.plan.n_images
    assert reference.report.finalize.unreferenced_images == []


def _eager(model: MobileVLM, row: dict):
    """One unpadded sample through the eager teacher: (first-layer probs [H, L, L], logits [L, vocab], index)."""
    ids, lab = torch.tensor([row["input_ids"]]), torch.tensor([row["labels"]])
    px = preprocess_image(Image.open(row["image_path"]), model.config)[None] if row["image_hash"] else None
    with torch.no_grad():
        e = model.embed_inputs(ids, px, None, lab)
        out = model.model(inputs_embeds=e.embeds, attention_mask=e.attention_mask, output_attentions=True)
        logits = model.lm_head(out.last_hidden_state)[0]
    return out.attentions[0][0], logits, sample_index(row["input_ids"], row["labels"], model.num_vision_tokens), px


def test_targets_equal_the_eager_teacher(reference):
    """Every target against an independent eager run of the teacher. The default store recomputes
    the first-layer attention (cache.attention auto): its blocks are rebuilt from the store's
    teacher weights over the tower's features exactly as student_train does, and compared too."""
    from student_train.teacher_projector import TeacherFirstLayer, TeacherTokens

    prov = reference.job.provenance
    model = MobileVLM.from_pretrained(reference.job.teacher_dir, attn_implementation="eager")
    r = CacheReader(reference.store)
    k = prov.logits_topk
    first = None
    if prov.attention == "recompute":
        assert not any((p / "attn_first_tv").exists() for p in (reference.store / "units").iterdir())
        tt = TeacherTokens(r.teacher_projector(), prov.num_vision_tokens, "cpu")
        tt.capture(model.vision_tower)  # the teacher's tower is the student's (same fingerprint)
        first = TeacherFirstLayer(*r.teacher_first_layer(), tt, ("tv",), "cpu")
    for row in reference.job.rows.table.to_pylist():
        if first is not None:
            first.tokens.reset()
        a0, logits, si, px = _eager(model, row)
        s = r.get(row["sample_id"])
        assert s.token_hash == row["token_hash"] and s.n_text == si.n_text_after
        if si.has_image:
            tv = a0[:, si.t_start : si.length, si.v_start : si.v_start + si.n_vision].numpy()  # [H, |T|, |V|]
            if first is not None:  # recomputed in fp32 from the stored teacher weights: the eager values
                ids = torch.tensor([row["input_ids"]])
                got_tv = first.attention(ids, px, torch.ones_like(ids))[("first", "tv")][0].numpy()
                np.testing.assert_allclose(got_tv, tv, rtol=1e-4, atol=1e-6, err_msg=row["sample_id"])
            elif prov.encoding.attn in ("u8", "u8sqrt"):
                got_tv = s.attn[("first", "tv")]
                # 8-bit codes scaled per row: |err| <= row max / 255 (cache_schema/README.md)
                bound = tv.max(axis=-1, keepdims=True) / 255 + 1e-7
                assert (np.abs(got_tv - tv) <= bound).all(), row["sample_id"]
            else:  # float16: |err| <= 2^-11 * p; float32: exact
                got_tv = s.attn[("first", "tv")]
                np.testing.assert_allclose(got_tv, tv, rtol=1e-3, atol=1e-6, err_msg=row["sample_id"])
            score = tv.mean(axis=(0, 1))  # focus score per vision token
            kth = np.sort(score)[::-1][prov.focus_k - 1]
            assert len(set(s.focus.tolist())) == prov.focus_k and (score[s.focus] >= kth - 1e-6).all()
            if prov.projector_tokens == "stored":
                np.testing.assert_allclose(r.image_tokens(row["image_hash"]),
                                           model.encode_images(px)[0].detach().numpy(), rtol=2e-3, atol=1e-4)
        else:
            assert s.focus.shape == (0,) and (first is not None or s.attn[("first", "tv")].shape[1] == 0)
        logp = torch.log_softmax(logits[torch.as_tensor(si.resp)].double(), -1)  # [|R|, vocab]
        assert s.topk_ids.shape == (len(si.resp), k)
        got = logp.gather(1, torch.as_tensor(s.topk_ids)).numpy()
        np.testing.assert_allclose(s.topk_logprobs, got, rtol=1e-3, atol=1e-4)  # float16 log p
        next_best = torch.topk(logp, k + 1).values[:, -1].numpy()
        assert (got.min(1) >= next_best - 1e-5).all(), "stored ids are not the top-k"
        tail = np.log1p(-np.exp(got).sum(1))
        np.testing.assert_allclose(s.tail_logmass, tail, atol=1e-4)


def test_default_dump_recomputes_and_equals_a_stored_dump(reference, dump_world, tmp_path):
    """The world's student shares the teacher's tower, so cache.projector_tokens auto writes the
    teacher projector and no tokens; the tokens the student rebuilds from its own tower with that
    projector (student_train.teacher_projector, as training does) equal the tokens a dump with
    projector_tokens: stored writes (float32 both: the dump's dtype path)."""
    from pipeline.fingerprint import tower_fingerprint
    from student_train.teacher_projector import TeacherTokens

    prov = reference.job.provenance
    assert prov.projector_tokens == "recompute"
    assert prov.vision_tower_fingerprint == tower_fingerprint(dump_world.world / "student_init")
    r = CacheReader(reference.store)
    assert not any((p / "image_tokens").exists() for p in (reference.store / "units").iterdir())
    with pytest.raises(Exception, match="stores no projector tokens"):
        r.image_tokens(next(h for h in reference.job.rows.table.column("image_hash").to_pylist() if h))
    job = check_inputs(load_workflow(workflow(tmp_path, "stored", dump_world.world, manifest=dump_world.root / "manifest.parquet",
                                              cache={"projector_tokens": "stored", "vision_dtype": "float32"},
                                              dump={"workers": 1})), "short")
    assert job.provenance.projector_tokens == "stored"
    dump(job, progress=False)
    stored = CacheReader(job.store_path)
    tokens = TeacherTokens(r.teacher_projector(), prov.num_vision_tokens, "cpu")
    student = MobileVLM.from_pretrained(dump_world.world / "student_init")
    tokens.capture(student.vision_tower)
    seen = {}
    for row in reference.job.rows.table.to_pylist():
        h = row["image_hash"]
        if not h or h in seen:
            continue
        px = preprocess_image(Image.open(row["image_path"]), student.config)[None]
        tokens.reset()
        with torch.no_grad():
            student.encode_images(px)
        seen[h] = tokens.tokens(torch.tensor([True]))[0].numpy()
        np.testing.assert_allclose(seen[h], stored.image_tokens(h), rtol=1e-5, atol=1e-6, err_msg=h)
    assert len(seen) == reference.plan.n_images > 0


def test_changing_unit_size_on_resume_is_refused(reference):
    wf = with_overrides(load_workflow(reference.job.wf.source), {"dump.unit_size": 3})
    job = check_inputs(wf, "short")
    assert job.resume
    with pytest.raises(DumpInputError, match="set dump.unit_size back to 4"):
        plan_job(job)


def test_a_bad_image_is_recorded_and_the_rest_completes(dump_world, ray_local, tmp_path):
    table = pq.read_table(dump_world.root / "manifest.parquet")
    rows = table.to_pylist()
    short_hashes = [r["image_hash"] for r in rows if r["in_short"]]
    i = next(j for j, r in enumerate(rows) if r["in_short"] and r["image_hash"] and short_hashes.count(r["image_hash"]) == 1)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)  # present, hashed, undecodable
    paths, hashes = table.column("image_path").to_pylist(), table.column("image_hash").to_pylist()
    paths[i], hashes[i] = str(bad), hashlib.sha256(bad.read_bytes()).hexdigest()[:16]
    for name, col in (("image_path", paths), ("image_hash", hashes)):
        table = table.set_column(table.schema.get_field_index(name), name, [col])
    pq.write_table(table, tmp_path / "m.parquet")
    job = check_inputs(load_workflow(workflow(tmp_path, "bad", dump_world.world, manifest=tmp_path / "m.parquet",
                                              dump={"workers": 1})), "short")
    logs: list[str] = []
    rep = dump(job, progress=False, log=logs.append)
    sid = rows[i]["sample_id"]
    assert list(rep.failures) == [sid] and "unreadable image" in rep.failures[sid]
    assert rep.finalize.n_samples == job.rows.table.num_rows - 1
    recorded = [json.loads(x) for x in (job.failures_dir / "failures.jsonl").read_text().splitlines()]
    assert [f["sample_id"] for f in recorded] == [sid]
    assert any("1 sample(s) could not be cached" in m for m in logs), logs
    expected = [s for s in job.rows.table.column("sample_id").to_pylist() if s != sid]
    assert verify_store(job.store_path, expected_sample_ids=expected).ok
