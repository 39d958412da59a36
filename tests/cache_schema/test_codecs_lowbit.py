"""The opt-in low-bit attention encodings (u6, u6sqrt, u5, u5sqrt, u4, u4sqrt): per-entry error bounds, the
default and the 8-bit codes unchanged, and a round trip through a real store with the
bit-shuffling codec they are meant for (which must also make them smaller on disk)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from cache_schema_testlib import TINY_CHUNKS, make_prov, write_unit

from cache_schema import CacheReader, CacheStore, Encoding
from cache_schema import codecs as C

LOWBIT = {"u6": (63, False), "u6sqrt": (63, True), "u5": (31, False), "u5sqrt": (31, True), "u4": (15, False),
          "u4sqrt": (15, True)}


def _heavy_tailed(rng: np.random.Generator, shape=(8, 20, 144)) -> np.ndarray:
    """Softmax rows with a few large logits: most entries tiny, a few near the row max."""
    z = rng.standard_normal(shape) * 2.5
    z[..., :3] += 6.0
    p = np.exp(z - z.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)


def _bound(x: np.ndarray, q: np.ndarray, levels: int, companded: bool) -> np.ndarray:
    m = x.max(-1, keepdims=True)
    if companded:  # the step around code q is m·((q+½)² - (q-½)²)/L² = m·2q/L²; half of it, rounded up
        return m * (2.0 * q.astype(np.float64) + 1.0) / (2.0 * levels**2)
    return np.broadcast_to(m / (2.0 * levels), x.shape)


@pytest.mark.parametrize("mode", sorted(LOWBIT))
def test_lowbit_error_within_bound(mode):
    levels, companded = LOWBIT[mode]
    x = _heavy_tailed(np.random.default_rng(0))
    q, scale = C.encode_attn(x, mode)
    assert q.dtype == np.uint8 and int(q.max()) == levels  # the row max is code L exactly
    assert C.attn_dtype(mode) == np.uint8 and C.attn_has_scale(mode) and C.attn_levels(mode) == levels
    xh = C.decode_attn(q, scale, mode)
    assert xh.dtype == np.float32 and xh.shape == x.shape
    err = np.abs(xh.astype(np.float64) - x)
    assert (err <= _bound(x, q, levels, companded) * 1.0001 + 1e-9).all(), float(err.max())
    np.testing.assert_allclose(xh.max(-1), x.max(-1), rtol=1e-6)  # the row max survives exactly


def test_sqrt_companding_is_finer_for_small_weights():
    """Why the sqrt modes exist: attention rows are heavy-tailed, so most entries are far below
    the row max, where the sqrt map's steps are small."""
    x = _heavy_tailed(np.random.default_rng(1))
    small = x < 0.05 * x.max(-1, keepdims=True)
    assert small.mean() > 0.5
    for b in ("u4", "u6"):
        lin = np.abs(C.decode_attn(*C.encode_attn(x, b), b) - x)[small].mean()
        sq = np.abs(C.decode_attn(*C.encode_attn(x, b + "sqrt"), b + "sqrt") - x)[small].mean()
        assert sq < 0.5 * lin, (b, sq, lin)


def test_fewer_bits_more_error_and_8bit_codes_unchanged():
    x = _heavy_tailed(np.random.default_rng(2))
    errs = {m: np.abs(C.decode_attn(*C.encode_attn(x, m), m) - x).mean() for m in ("u4sqrt", "u6sqrt", "u8sqrt")}
    assert errs["u4sqrt"] > errs["u6sqrt"] > errs["u8sqrt"]
    # u8 / u8sqrt are the store's existing codes: the generalisation must not move a single one
    m = x.max(-1, keepdims=True)
    q, s = C.encode_attn(x, "u8sqrt")
    np.testing.assert_array_equal(q, np.rint(np.sqrt(np.clip(x / m, 0, 1)) * 255.0).astype(np.uint8))
    np.testing.assert_array_equal(C.decode_attn(q, s, "u8sqrt"), (q.astype(np.float32) * np.float32(1 / 255)) ** 2 * s[..., None])
    q, s = C.encode_attn(x, "u8")
    np.testing.assert_array_equal(q, np.rint(np.clip(x / m, 0, 1) * 255.0).astype(np.uint8))


def test_zero_rows_and_empty_rows():
    for mode in LOWBIT:
        z = np.zeros((2, 3, 5), np.float32)
        np.testing.assert_array_equal(C.decode_attn(*C.encode_attn(z, mode), mode), z)
        e = np.zeros((2, 0, 5), np.float32)
        assert C.decode_attn(*C.encode_attn(e, mode), mode).shape == (2, 0, 5)


def test_defaults_unchanged_and_lowbit_opt_in():
    assert Encoding().attn == "u8sqrt" and Encoding().attn_codec == "zstd:3"
    assert C.ATTN_MODES == ("f32", "f16", "u8", "u8sqrt")  # tables that enumerate the defaults stay as they are
    for mode in LOWBIT:
        assert Encoding(attn=mode).attn == mode
    with pytest.raises(ValueError, match=r"attn='u3'.*u4sqrt"):
        Encoding(attn="u3")


@pytest.mark.parametrize("mode", ["u4sqrt", "u6sqrt"])
def test_lowbit_store_roundtrip(tmp_path, mode):
    levels, companded = LOWBIT[mode]
    for m, codec in ((mode, "blosc:zstd:3:bitshuffle"), ("u8sqrt", "zstd:3")):
        prov = make_prov(Encoding(attn=m, attn_codec=codec, **TINY_CHUNKS), blocks=("first.tv", "last.full"))
        path = tmp_path / m
        store = CacheStore.create_or_open(path, prov)
        data = write_unit(store, "u0", [f"ds/{i}" for i in range(6)], seed=3)
        store.finalize([f"ds/{i}" for i in range(6)])
        r = CacheReader(path, expect={"encoding": {"attn": m}})
        for sid in r.sample_ids:
            for k, a in data[sid].attn.items():
                got = r.get(sid).attn[k]
                if not a.size:
                    continue
                q, _ = C.encode_attn(a, m)
                lv, cp = (levels, companded) if m == mode else (255, True)
                assert (np.abs(got - a) <= _bound(a, q, lv, cp) * 1.0001 + 1e-9).all(), (m, sid, k)


def _stored_bytes(tmp_path, name: str, codes: np.ndarray, codec: str) -> int:
    arr = zarr.create_array(store=str(tmp_path / name), shape=codes.shape, chunks=codes.shape, dtype=codes.dtype,
                            compressors=C.codec_chain(codec, typesize=codes.dtype.itemsize))
    arr[:] = codes
    return sum(f.stat().st_size for f in (tmp_path / name).rglob("*") if f.is_file() and f.name != "zarr.json")


def test_bitshuffle_drops_the_empty_bit_planes(tmp_path):
    """One first-layer block at the real shape (32 heads × 200 × 144): b-bit codes in uint8 with
    the bit-shuffling codec cost about b/8 of the u8 codes (less after entropy coding)."""
    x = _heavy_tailed(np.random.default_rng(4), (32, 200, 144)).ravel()
    u8 = _stored_bytes(tmp_path, "u8sqrt", C.encode_attn(x, "u8sqrt")[0], "zstd:3")
    for mode, bits in (("u6sqrt", 6), ("u4sqrt", 4)):
        got = _stored_bytes(tmp_path, mode, C.encode_attn(x, mode)[0], "blosc:zstd:3:bitshuffle")
        assert got < u8 * (bits + 0.5) / 8, (mode, got, u8)


@pytest.mark.parametrize("spelling,mode", [("uint4sqrt", "u4sqrt"), ("u6sqrt", "u6sqrt"), ("uint6", "u6")])
def test_workflow_cache_section_selects_lowbit(spelling, mode):
    """`cache.attn_dtype` in a workflow picks a low-bit code and gets the bit-shuffling codec."""
    from pipeline.workflow import CacheConfig
    from teacher_dump.validate import encoding_from_cache

    enc = encoding_from_cache(CacheConfig(attn_dtype=spelling))
    assert enc.attn == mode and enc.attn_codec == "blosc:zstd:3:bitshuffle"
    default = encoding_from_cache(CacheConfig())
    assert (default.attn, default.attn_codec) == ("u8sqrt", "zstd:3")
