"""Real processes (spawn) writing one store: concurrent units, a SIGKILLed writer, resume."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest
from cache_schema_testlib import gen_unit, make_prov, write_unit

from cache_schema import CacheReader, CacheStore, CoverageError, NotFinalizedError, verify_store

UNITS = {"u0": (["a/0", "a/1", "a/2"], 10), "u1": (["a/3", "a/4"], 11),
         "u2": (["b/0", "b/1", "b/2", "b/3"], 12), "u3": (["b/4"], 13)}


def _writer(path: str, units: list[str], barrier) -> None:
    store = CacheStore.create_or_open(path, make_prov())  # both processes race to create the store
    barrier.wait(timeout=60)
    for u in units:
        ids, seed = UNITS[u]
        write_unit(store, u, ids, seed)


def _slow_writer(path: str, started) -> None:
    """Writes half of unit u2, flushing shards to disk, then waits to be killed."""
    store = CacheStore.create_or_open(path, make_prov())
    ids, seed = UNITS["u2"]
    images, samples = gen_unit(store.provenance, "u2", ids, seed)
    w = store.unit_writer("u2")
    for h, tok in images.items():
        w.add_image(h, tok)
    for s in samples[:2]:
        w.add_sample(s)
    started.set()
    time.sleep(600)


def _all_ids():
    return [i for ids, _ in UNITS.values() for i in ids]


def test_two_processes_write_one_store(tmp_path):
    ctx = mp.get_context("spawn")
    path = str(tmp_path / "c")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(path, us, barrier)) for us in (["u0", "u2"], ["u1", "u3"])]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    store = CacheStore.open(path)
    assert store.committed_units() == ["u0", "u1", "u2", "u3"] and store.incomplete_units() == []
    rep = store.finalize(_all_ids())
    assert (rep.n_samples, rep.n_units) == (10, 4)
    assert verify_store(path).ok
    r = CacheReader(path)
    for u, (ids, seed) in UNITS.items():
        images, samples = gen_unit(r.provenance, u, ids, seed)
        for s in samples:
            got = r.get(s.sample_id)
            np.testing.assert_array_equal(got.topk_ids, s.topk_ids)
            np.testing.assert_array_equal(got.attn[("first", "tv")], s.attn[("first", "tv")])
        for h, tok in images.items():
            np.testing.assert_array_equal(r.image_tokens(h), tok)


def test_killed_writer_leaves_incomplete_unit_and_rerun_completes(tmp_path):
    ctx = mp.get_context("spawn")
    path = str(tmp_path / "c")
    store = CacheStore.create_or_open(path, make_prov())
    for u in ("u0", "u1", "u3"):
        write_unit(store, u, *UNITS[u])
    started = ctx.Event()
    p = ctx.Process(target=_slow_writer, args=(path, started))
    p.start()
    assert started.wait(timeout=120)
    os.kill(p.pid, signal.SIGKILL)
    p.join(timeout=30)
    assert p.exitcode == -signal.SIGKILL
    assert any((tmp_path / "c" / "staging").iterdir())  # it had written files

    assert store.incomplete_units() == ["u2"] and not store.is_unit_complete("u2")
    rep = verify_store(path)
    assert rep.incomplete_units == ["u2"] and not rep.ok
    with pytest.raises(CoverageError, match=r"(?s)4 of 10 expected sample\(s\) missing.*'b/0'.*incomplete units.*'u2'"):
        store.finalize(_all_ids())
    with pytest.raises(NotFinalizedError):
        CacheReader(path)

    # resume: complete units are skipped, the incomplete one is redone and replaces the leftovers
    redo = [u for u in UNITS if not store.is_unit_complete(u)]
    assert redo == ["u2"]
    write_unit(store, "u2", *UNITS["u2"])
    assert store.incomplete_units() == [] and not any((tmp_path / "c" / "staging").iterdir())
    store.finalize(_all_ids())
    assert verify_store(path).ok
    r = CacheReader(path)
    assert len(r) == 10 and r.get("b/3").sample_id == "b/3"
