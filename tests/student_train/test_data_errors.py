"""What the loader refuses, before or during training, and how it says so."""

from __future__ import annotations

import pytest

from cache_schema import CacheReader
from pipeline.workflow import with_overrides
from student_train.data import (
    CacheMismatchError,
    MissingSampleError,
    StoreMismatchError,
    build_train_loader,
    check_store,
)
from student_train.preflight import count_trained_samples

SUBSET, STAGE = "short", "finetune"
VICTIM = "toy_qa/ft-00002"


def test_token_hash_mismatch_is_refused_naming_the_sample(tiny_world, tmp_path):
    wf = tiny_world.workflow()
    wf = with_overrides(wf, {"cache.dir": str(tmp_path)})
    tiny_world.write_store(wf, SUBSET, token_hash_override={VICTIM: "0123456789abcdef"})
    loader, _ = build_train_loader(wf, SUBSET, STAGE, "cached", 0, 1, 4, seed=0)
    with pytest.raises(CacheMismatchError, match=f"sample '{VICTIM}': token_hash differs"):
        list(loader)


def test_provenance_mismatch_is_refused_before_training(tiny_world, tiny_store):
    wf = tiny_world.workflow()
    dumped = wf.data.subsets[SUBSET]  # the subset limit the store was dumped for
    wf = with_overrides(wf, {"cache.logits_topk": 32,  # the store holds top-64
                             "data.subsets": {**wf.data.subsets, SUBSET: dumped + 40}})
    with pytest.raises(StoreMismatchError) as e:
        build_train_loader(wf, SUBSET, STAGE, "cached", 0, 1, 4, seed=0)
    msg = str(e.value)
    assert "2 problem(s)" in msg and "logits_topk: the run expects 32, the store has 64" in msg
    assert f"max_length: the run expects {dumped + 40}, the store has {dumped}" in msg and "alignkd teacher-dump" in msg


def test_adapter_expectations_and_missing_blocks_are_checked(tiny_world, tiny_store, tmp_path):
    wf = tiny_world.workflow()
    wf = with_overrides(wf, {"models.teacher": str(tmp_path / "absent"),
                             "train.loss.preset": "vv", "train.loss.attn_block": "vv"})  # the store holds first.tv only
    with pytest.raises(StoreMismatchError) as e:
        check_store(wf, SUBSET, CacheReader(tiny_store), teacher_heads=16, teacher_hidden=256)
    msg = str(e.value)
    assert "teacher_heads: the head adapters expect 16, the store has 8" in msg
    assert "attn_blocks: the loss (vv) needs ['first.vv']" in msg and "teacher_hidden" not in msg


def test_missing_sample_is_an_error_naming_it(tiny_world, tmp_path):
    wf = tiny_world.workflow()
    wf = with_overrides(wf, {"cache.dir": str(tmp_path)})
    tiny_world.write_store(wf, SUBSET, drop=(VICTIM,))
    total = sum(r["stage"] == STAGE for r in tiny_world.manifest_rows(SUBSET))
    with pytest.raises(MissingSampleError, match=f"1 of {total} finetune/short samples .*'{VICTIM}'.*missing_sample: skip"):
        build_train_loader(wf, SUBSET, STAGE, "cached", 0, 1, 4, seed=0)
    wf = with_overrides(wf, {"train.missing_sample": "skip"})
    loader, n = build_train_loader(wf, SUBSET, STAGE, "cached", 0, 1, 4, seed=0)
    ids = [s for b in loader for s in b.sample_ids]
    assert n == total - 1 and loader.dataset.num_missing == 1 and VICTIM not in ids and len(ids) == n
    assert count_trained_samples(wf, SUBSET, STAGE, wf.cache_path(SUBSET)) == n  # the launching process's count
