"""The planner: deterministic, length-sorted units; every image owned by exactly one unit (its first user)."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from teacher_dump.plan import SAMPLE_COLUMNS, make_plan, plan_digest


def _table(n: int = 23, n_images: int = 7, seed: int = 0) -> pa.Table:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        img = "" if i % 9 == 4 else f"img{rng.randrange(n_images):02d}"  # some text-only rows
        rows.append({"sample_id": f"ds/{i:03d}", "image_path": f"/x/{img}.png" if img else "", "image_hash": img,
                     "input_ids": [1, 2], "labels": [-100, 2], "token_hash": f"t{i}", "embedded_len": rng.randrange(50, 90),
                     "n_text_after_image": 3, "n_response": 1})
    return pa.Table.from_pylist(rows)


def test_units_are_sorted_by_length_and_cut_to_unit_size():
    t = _table()
    plan = make_plan(t, "short", unit_size=5)
    assert [len(u) for u in plan.units] == [5, 5, 5, 5, 3]
    assert [u.unit_id for u in plan.units] == [f"u{i:06d}" for i in range(5)]
    lens = [l for u in map(plan.materialize, plan.units) for l in u.rows["embedded_len"]]
    assert lens == sorted(lens)
    assert sorted(plan.sample_ids()) == sorted(t.column("sample_id").to_pylist())
    u = plan.materialize(plan.units[1])
    assert set(u.rows) == set(SAMPLE_COLUMNS) and tuple(u.rows["sample_id"]) == u.sample_ids


def test_each_image_is_owned_once_by_its_first_unit():
    plan = make_plan(_table(), "short", unit_size=4)
    owners: dict[str, str] = {}
    units = [plan.materialize(u) for u in plan.units]
    for u in units:
        for h in u.owned_images:
            assert h not in owners, f"{h} owned twice"
            owners[h] = u.unit_id
            assert h in u.rows["image_hash"]
    first_use = {}
    for u in units:
        for h in u.rows["image_hash"]:
            if h:
                first_use.setdefault(h, u.unit_id)
    assert owners == first_use
    assert plan.n_images == len(owners)


def test_plan_ignores_row_order_and_digest_tracks_unit_size():
    t = _table()
    shuffled = t.take(list(reversed(range(t.num_rows))))
    a, b = make_plan(t, "short", 4), make_plan(shuffled, "short", 4)
    assert [u.sample_ids for u in a.units] == [u.sample_ids for u in b.units]
    assert plan_digest(a) == plan_digest(b)
    assert plan_digest(make_plan(t, "short", 5)) != plan_digest(a)


def test_duplicate_sample_ids_are_refused():
    t = _table(5)
    t = pa.concat_tables([t, t.slice(0, 1)])
    with pytest.raises(ValueError, match="repeats sample_id 'ds/000'"):
        make_plan(t, "short", 4)
