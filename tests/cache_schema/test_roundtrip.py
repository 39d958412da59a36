"""Ragged round trips through a real zarr store: exact when lossless, within the documented
bounds when lossy; write-time validation names the sample."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from cache_schema_testlib import TINY_CHUNKS, make_image, make_prov, make_sample, write_unit

from cache_schema import CacheReader, CacheStore, Encoding, NotFinalizedError, SampleTargets, SampleValidationError

ALL_BLOCKS = ("first.tv", "first.vv", "first.tt", "first.full", "last.tv", "last.full")


def _ids(n, start=0):
    return [f"ds{i % 2}/{i}" for i in range(start, start + n)]


def test_lossless_ragged_roundtrip_is_exact(tmp_path):
    prov = make_prov(Encoding.lossless(**TINY_CHUNKS), blocks=ALL_BLOCKS)
    store = CacheStore.create_or_open(tmp_path / "c", prov)
    data = write_unit(store, "u0", _ids(7), seed=0)  # images shared by pairs, every 3rd sample image-less
    data |= write_unit(store, "u1", _ids(4, 7), seed=1)
    # explicit edge cases: |R| = 0 and |T| = 0 with an image
    rng = np.random.default_rng(5)
    with store.unit_writer("edge") as w:
        data["edge-img"] = make_image(rng, prov)
        w.add_image("edge-img", data["edge-img"])
        for sid, t, r in (("edge/noresp", 3, 0), ("edge/notext", 0, 2)):
            data[sid] = make_sample(sid, rng, prov, image_hash="edge-img", n_text=t, n_resp=r)
            w.add_sample(data[sid])
    store.finalize([k for k, v in data.items() if isinstance(v, SampleTargets)])
    r = CacheReader(tmp_path / "c")
    assert len(r) == 13 and r.sample_ids == sorted(r.sample_ids)
    for sid in r.sample_ids:
        got, want = r.get(sid), data[sid]
        assert set(got.attn) == set(want.attn)
        for k in want.attn:
            assert got.attn[k].dtype == np.float32 and got.attn[k].shape == want.attn[k].shape
            np.testing.assert_array_equal(got.attn[k], want.attn[k])
        assert got.focus.dtype == np.int64 and got.topk_ids.dtype == np.int64
        np.testing.assert_array_equal(got.focus, want.focus)
        np.testing.assert_array_equal(got.topk_ids, want.topk_ids)
        np.testing.assert_array_equal(got.topk_logprobs, want.topk_logprobs)
        np.testing.assert_array_equal(got.tail_logmass, want.tail_logmass)
        assert (got.token_hash, got.image_hash, got.n_text) == (want.token_hash, want.image_hash, want.n_text)
        if got.image_hash:
            np.testing.assert_array_equal(r.image_tokens(got.image_hash), data[got.image_hash])
    # streaming in a given order with prefetch == random access
    order = list(reversed(r.sample_ids))
    assert [s.sample_id for s in r.iter_samples(order, prefetch=2)] == order
    # storage order: runs of consecutive rows are read with one slice per array
    stored = [k for k, v in data.items() if isinstance(v, SampleTargets)]
    for got in r.iter_samples(iter(stored), prefetch=3, max_run=4):
        want = data[got.sample_id]
        for k in want.attn:
            np.testing.assert_array_equal(got.attn[k], want.attn[k])
        np.testing.assert_array_equal(got.topk_logprobs, want.topk_logprobs)
    it = r.iter_samples(stored, prefetch=1)
    assert next(it).sample_id == stored[0]
    it.close()  # stopping early stops the prefetch thread
    # picklable: travels without handles, reopens lazily
    r2 = pickle.loads(pickle.dumps(r))
    np.testing.assert_array_equal(r2.get(order[0]).topk_logprobs, data[order[0]].topk_logprobs)


@pytest.mark.parametrize("attn,logprobs,vision", [("u8sqrt", "f16", "f16"), ("u8", "f32", "bf16"),
                                                  ("f16", "f16", "f32")])
def test_lossy_roundtrip_within_bounds(tmp_path, attn, logprobs, vision):
    prov = make_prov(Encoding(attn=attn, logprobs=logprobs, vision=vision, **TINY_CHUNKS),
                     blocks=("first.tv", "last.full"))
    store = CacheStore.create_or_open(tmp_path / "c", prov)
    data = write_unit(store, "u0", _ids(6), seed=2)
    store.finalize(_ids(6))
    r = CacheReader(tmp_path / "c", expect={"encoding": {"attn": attn}})
    for sid in _ids(6):
        got, want = r.get(sid), data[sid]
        for k, a in want.attn.items():
            err = np.abs(got.attn[k] - a)
            m = a.max(-1, keepdims=True) if a.size else a
            bound = {"u8": m / 510, "u8sqrt": m / 255, "f16": np.abs(a) * 2.0 ** -11 + 2.0 ** -24}[attn]
            assert (err <= bound * 1.001 + 1e-7).all(), (sid, k, float(err.max()))
        lp_bound = np.abs(want.topk_logprobs) * 2.0 ** -11 + 1e-7 if logprobs == "f16" else 0
        assert (np.abs(got.topk_logprobs - want.topk_logprobs) <= lp_bound).all()
        np.testing.assert_array_equal(got.topk_ids, want.topk_ids)
        np.testing.assert_array_equal(got.tail_logmass, want.tail_logmass)
        if got.image_hash:
            x, xh = data[got.image_hash], r.image_tokens(got.image_hash)
            rel = {"f32": 0.0, "f16": 2.0 ** -11, "bf16": 2.0 ** -8}[vision]
            assert (np.abs(xh - x) <= np.abs(x) * rel + 1e-7).all()


def test_writer_rejects_bad_samples_naming_them(tmp_path, prov):
    store = CacheStore.create_or_open(tmp_path / "c", prov)
    rng = np.random.default_rng(0)
    good = make_sample("ds/ok", rng, prov)
    cases = {
        "dtype": dict(attn={("first", "tv"): good.attn[("first", "tv")].astype(np.float64)}),
        "shape": dict(attn={("first", "tv"): good.attn[("first", "tv")][:, :, :-1]}),
        "ragged n_text": dict(n_text=good.n_text + 1),
        "blocks": dict(attn={("last", "tv"): good.attn[("first", "tv")]}),
        "ids range": dict(topk_ids=good.topk_ids + 1000),
        "logprobs dtype": dict(topk_logprobs=good.topk_logprobs.astype(np.float16)),
        "tail shape": dict(tail_logmass=good.tail_logmass[:-1] if good.n_resp else np.zeros(1, np.float32)),
        "focus": dict(focus=np.array([0, 0, 1])),
        "probability": dict(attn={("first", "tv"): good.attn[("first", "tv")] + 2.0}),
    }
    with store.unit_writer("u0") as w:
        for name, change in cases.items():
            bad = SampleTargets(**{**good.__dict__, **change, "sample_id": f"ds/bad-{name}"})
            with pytest.raises(SampleValidationError, match=f"ds/bad-{name}"):
                w.add_sample(bad)
        w.add_sample(good)
        with pytest.raises(SampleValidationError, match="added twice"):
            w.add_sample(good)
        w.add_image("img0", make_image(rng, prov))
        with pytest.raises(SampleValidationError, match="img0"):
            w.add_image("img0", make_image(rng, prov))
        with pytest.raises(SampleValidationError, match="float32"):
            w.add_image("img1", make_image(rng, prov).astype(np.float16))
    big = make_image(rng, prov) * 1e6
    with pytest.raises(SampleValidationError, match="bf16"):
        CacheStore.create_or_open(tmp_path / "d", make_prov(Encoding(**TINY_CHUNKS))).unit_writer("u").add_image("x", big)


def test_reader_refuses_unfinalised_and_exception_discards_unit(tmp_path, prov):
    store = CacheStore.create_or_open(tmp_path / "c", prov)
    with pytest.raises(RuntimeError):
        with store.unit_writer("u0") as w:
            w.add_sample(make_sample("ds/0", np.random.default_rng(0), prov, image_hash=None))
            raise RuntimeError("producer failed")
    assert not store.is_unit_complete("u0") and store.committed_units() == []
    with pytest.raises(NotFinalizedError, match="finalize"):
        CacheReader(tmp_path / "c")
