"""ShardedBatchSampler: exact coverage across ranks, equal step counts, exact resume (pure index
arithmetic: no world needed)."""

from __future__ import annotations

import pytest

from student_train.data.sampler import ShardedBatchSampler, micro_steps_per_epoch


@pytest.mark.parametrize("n,world,mb", [(16, 2, 4), (17, 2, 4), (9, 2, 4), (3, 2, 4), (13, 3, 2), (7, 1, 3), (5, 2, 1)])
def test_one_epoch_covers_every_sample_once_across_ranks(n, world, mb):
    shards = [list(ShardedBatchSampler(n, r, world, mb, seed=3)) for r in range(world)]
    steps = micro_steps_per_epoch(n, world, mb)
    assert all(len(s) == steps for s in shards)  # every rank runs the same number of micro-steps
    seen = [i for s in shards for batch in s for i in batch]
    assert sorted(seen) == list(range(n))  # each sample exactly once, none repeated
    assert all(1 <= len(b) <= mb + 1 for s in shards for b in s)  # +1 only in a merged short chunk


def test_epochs_reshuffle_deterministically_by_seed_and_epoch():
    a = list(ShardedBatchSampler(12, 0, 2, 3, seed=0, end_step=4))  # 2 steps per epoch → 2 epochs
    b = list(ShardedBatchSampler(12, 0, 2, 3, seed=0, end_step=4))
    c = list(ShardedBatchSampler(12, 0, 2, 3, seed=1, end_step=4))
    assert a == b and a != c
    assert a[:2] != a[2:]  # epoch 1 has its own order


@pytest.mark.parametrize("start", [0, 1, 4, 5, 9])
def test_resume_yields_exactly_the_remaining_micro_batches(start):
    full = list(ShardedBatchSampler(11, 1, 2, 2, seed=7, end_step=12))  # 3 steps/epoch, 4 epochs
    resumed = ShardedBatchSampler(11, 1, 2, 2, seed=7, start_step=start, end_step=12)
    assert len(resumed) == 12 - start
    assert list(resumed) == full[start:]


def test_default_end_is_the_end_of_the_current_epoch():
    s = ShardedBatchSampler(20, 0, 2, 3, seed=0, start_step=5)  # 4 steps/epoch: steps 5..7
    assert (s.start_step, s.end_step, len(s)) == (5, 8, 3)


def test_too_few_samples_for_the_ranks_is_refused():
    with pytest.raises(ValueError, match="cannot feed 4 ranks"):
        ShardedBatchSampler(3, 0, 4, 2, seed=0)
