"""build_train_loader on the tiny world: batch contents, sharding, resume, workers, the modes, and
the teacher directory absent in cached mode."""

from __future__ import annotations

import numpy as np
import torch

from cache_schema import CacheReader
from pipeline.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from pipeline.positions import sample_index
from pipeline.workflow import with_overrides
from student_train.data import StudentBatch, build_train_loader, check_store
from student_train.preflight import count_trained_samples

SUBSET, STAGE = "short", "finetune"


def _batches(loader) -> list[StudentBatch]:
    return list(loader)


def _same(a: StudentBatch, b: StudentBatch) -> bool:
    """Bit-for-bit equality of two batches, teacher targets included."""
    if a.sample_ids != b.sample_ids:
        return False
    tensors = lambda x: [x.input_ids, x.labels, x.attention_mask, x.images, x.teacher.vision_tokens,
                         x.teacher.sparse.ids, x.teacher.sparse.logprobs, x.teacher.sparse.tail_logmass,
                         *[t for v in x.teacher.attn.values() for t in v],
                         *[f for f in x.teacher.focus if f is not None]]
    return all((p is None and q is None) or torch.equal(p, q) for p, q in zip(tensors(a), tensors(b)))


def test_cached_batches_join_manifest_and_cache(tiny_world, tiny_store):
    wf = tiny_world.workflow()
    rows = {r["sample_id"]: r for r in tiny_world.manifest_rows(SUBSET) if r["stage"] == STAGE}
    loader, n = build_train_loader(wf, SUBSET, STAGE, "cached", 0, 1, micro_batch=4, seed=0)
    assert n == len(rows) and loader.dataset.num_missing == 0
    reader = CacheReader(tiny_store)
    seen, text_only = [], 0
    for batch in loader:
        b, length = batch.input_ids.shape
        assert batch.labels.shape == batch.attention_mask.shape == (b, length)
        for i, sid in enumerate(batch.sample_ids):
            r, m = rows[sid], int(batch.attention_mask[i].sum())
            assert m == len(r["input_ids"])
            assert batch.input_ids[i, :m].tolist() == r["input_ids"] and batch.labels[i, :m].tolist() == r["labels"]
            assert (batch.input_ids[i, m:] == 0).all() and (batch.labels[i, m:] == IGNORE_INDEX).all()
            rec = reader.get(sid)
            assert torch.equal(batch.teacher.attn[("first", "tv")][i], torch.from_numpy(rec.attn[("first", "tv")]))
            if r["image_path"]:
                assert torch.equal(batch.teacher.focus[i], torch.from_numpy(rec.focus))
                assert torch.equal(batch.teacher.vision_tokens[i], torch.from_numpy(reader.image_tokens(r["image_hash"])))
                assert batch.images[i].abs().sum() > 0
            else:
                text_only += 1
                assert batch.teacher.focus[i] is None and (batch.teacher.vision_tokens[i] == 0).all()
                assert (batch.input_ids[i] != IMAGE_TOKEN_INDEX).all()
        assert batch.images.shape == (b, 3, 64, 64)
        n_resp = sum(len(sample_index(rows[s]["input_ids"], rows[s]["labels"], 64).resp) for s in batch.sample_ids)
        assert batch.teacher.sparse.ids.shape == (n_resp, wf.cache.logits_topk) and batch.teacher.logits is None
        seen += batch.sample_ids
    assert sorted(seen) == sorted(rows) and text_only >= 1


def test_only_the_targets_the_loss_needs_are_loaded(tiny_world, tiny_store):
    wf = tiny_world.workflow()
    wf = with_overrides(wf, {"train.loss.preset": "rkl", "train.loss.attn": 0.0, "train.loss.focus": 0.0,
                             "train.loss.all_tokens": 0.0})
    batch = next(iter(build_train_loader(wf, SUBSET, STAGE, "cached", 0, 1, 4, seed=0)[0]))
    t = batch.teacher
    assert t.attn == {} and t.focus is None and t.vision_tokens is None and t.sparse is not None


def test_two_ranks_cover_the_data_exactly_once(tiny_world, tiny_store):
    wf = tiny_world.workflow()
    per_rank = [[s for b in build_train_loader(wf, SUBSET, STAGE, "cached", r, 2, 2, seed=5)[0] for s in b.sample_ids]
                for r in range(2)]
    ids = [r["sample_id"] for r in tiny_world.manifest_rows(SUBSET) if r["stage"] == STAGE]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(ids)


def test_resume_continues_bit_for_bit(tiny_world, tiny_store):
    wf = tiny_world.workflow()
    n = build_train_loader(wf, SUBSET, STAGE, "cached", 1, 2, 2, seed=0)[1]
    steps = len(build_train_loader(wf, SUBSET, STAGE, "cached", 1, 2, 2, seed=0)[0])  # one epoch
    end = steps + 2  # into the second epoch (reshuffled)
    full = _batches(build_train_loader(wf, SUBSET, STAGE, "cached", 1, 2, 2, seed=0, end_step=end)[0])
    start = steps - 1
    resumed = _batches(build_train_loader(wf, SUBSET, STAGE, "cached", 1, 2, 2, seed=0, start_step=start,
                                          end_step=end)[0])
    assert n > 4 and len(full) == end and len(resumed) == end - start
    assert all(_same(a, b) for a, b in zip(full[start:], resumed))


def test_worker_processes_give_the_same_batches(tiny_world, tiny_store):
    wf = tiny_world.workflow()
    inline = _batches(build_train_loader(wf, SUBSET, STAGE, "cached", 0, 1, 3, seed=2)[0])
    wf = with_overrides(wf, {"train.num_workers": 1, "train.prefetch_factor": 2})  # the reader is pickled into the worker
    workers = _batches(build_train_loader(wf, SUBSET, STAGE, "cached", 0, 1, 3, seed=2)[0])
    assert len(inline) == len(workers) and all(_same(a, b) for a, b in zip(inline, workers))


def test_cached_mode_runs_without_the_teacher_directory(tiny_world, tiny_store, tmp_path):
    wf = tiny_world.workflow()
    wf = with_overrides(wf, {"models.teacher": str(tmp_path / "no_teacher_here")})  # absent: nothing of the teacher may be opened
    reader = CacheReader(tiny_store)
    info = check_store(wf, SUBSET, reader)
    assert (info.teacher_heads, info.teacher_hidden) == (8, 256)  # from the store's provenance
    batches = _batches(build_train_loader(wf, SUBSET, "pretrain", "cached", 0, 1, 4, seed=0)[0])
    assert batches and all(b.teacher is not None and b.teacher.sparse is not None for b in batches)


def test_sft_and_online_modes_carry_no_teacher_and_need_no_cache(tiny_world, tmp_path):
    wf = tiny_world.workflow()
    wf = with_overrides(wf, {"cache.dir": str(tmp_path / "no_cache")})
    for mode in ("sft", "online"):
        loader, n = build_train_loader(wf, SUBSET, "pretrain", mode, 0, 1, 4, seed=0)
        batches = _batches(loader)
        assert sum(len(b) for b in batches) == n and all(b.teacher is None for b in batches)


def test_dataset_filter_of_the_stage(tiny_world):
    wf = tiny_world.workflow()
    wf = with_overrides(wf, {"train.finetune.datasets": ["toy_text"]})
    loader, n = build_train_loader(wf, SUBSET, STAGE, "sft", 0, 1, 4, seed=0)
    ids = [s for b in loader for s in b.sample_ids]
    assert n == 2 and sorted(ids) == ["toy_text/txt0", "toy_text/txt1"]
    assert count_trained_samples(wf, SUBSET, STAGE, None) == n  # the launching process's count
    b = next(iter(loader))
    assert b.images is None  # no row of the batch has an image
    assert np.all(b.input_ids.numpy() != IMAGE_TOKEN_INDEX)
