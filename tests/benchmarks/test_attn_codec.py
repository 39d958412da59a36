"""benchmarks.attn_codec on small blocks: the f32 reference is exact, the bytes are measured from
real zarr chunks (fewer bits → fewer bytes), and the error grows as bits shrink."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.attn_codec import ENCODINGS, error_table, fit_adapter, near_student
from student_train.adapters import HeadAdapter


def _blocks(seed=0, n=3, heads=8, cols=16):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        z = rng.standard_normal((heads, 20 + 7 * i, cols)) * 2.0
        p = np.exp(z)
        out.append((p / p.sum(-1, keepdims=True) * 0.4).astype(np.float32))  # rows hold 40% of the mass on V
    return out


def test_error_table_orders_encodings():
    t_np = _blocks()
    t = [torch.from_numpy(a) for a in t_np]
    near = near_student(t, 4)
    assert all(s.shape == (4, *b.shape[1:]) for s, b in zip(near, t))
    studs = {"init": (near, HeadAdapter(4, 8)), "near": (near, fit_adapter(near, t, 4, 8))}
    rows = error_table(t_np, studs, ENCODINGS)
    assert set(rows) == set(ENCODINGS)
    f32 = rows["f32"]
    assert f32["max_abs_err"] == 0 and all(v["loss_rel_err"] == 0 and v["grad_angle_deg"] < 1e-3 for v in f32["students"].values())
    bits = {k: r["bits_per_entry"] for k, r in rows.items()}
    assert bits["u4sqrt + bitshuffle"] < bits["u6sqrt + bitshuffle"] < bits["u8sqrt + bitshuffle"] < bits["f16"] < bits["f32"]
    for s in ("init", "near"):
        ang = {k: rows[k]["students"][s]["grad_angle_deg"] for k in ("u4sqrt + bitshuffle", "u6sqrt + bitshuffle", "u8sqrt + zstd (stored default)")}
        assert ang["u4sqrt + bitshuffle"] > ang["u6sqrt + bitshuffle"] > ang["u8sqrt + zstd (stored default)"] > 0, (s, ang)
    # a code transform changes bytes only: the decoded values, so every error, are the mode's
    for a, b in (("u8sqrt row-delta + zstd", "u8sqrt + zstd (stored default)"), ("u4sqrt row-delta + bitshuffle", "u4sqrt + bitshuffle")):
        assert rows[a]["students"] == rows[b]["students"] and rows[a]["max_abs_err"] == rows[b]["max_abs_err"]
        assert rows[a]["transform"] == "rowdelta" and rows[b]["transform"] is None


def test_cache_size_tiny_store_is_measured(tmp_path):
    """benchmarks.cache_size end to end at toy size: real dump reduction, real stores on disk."""
    import json

    from benchmarks.cache_size import main

    rep = main(["--tiny", "--samples", "4", "--batch", "2", "--threads", "1", "--out", str(tmp_path),
                "--encodings", "default,v1 layout (all stored),lossless,u4sqrt + bitshuffle",
                "--save-attn", str(tmp_path / "a.npz")])
    assert json.loads((tmp_path / "cache_size.json").read_text())["samples"] == rep["samples"] == 4
    d, stored, lossless, u4 = (rep["encodings"][k] for k in ("default", "v1 layout (all stored)", "lossless",
                                                             "u4sqrt + bitshuffle"))
    for m in (d, stored, lossless, u4):
        g = m["groups_bytes_per_sample"]
        assert all(g[k] > 0 for k in ("logits", "focus"))
        assert (g["vision"] > 0) == (m["projector_tokens"] == "stored")  # recompute: no tokens in the store
        assert (g["attention"] > 0) == (m["attention"] == "stored")  # nor attention
        assert m["projector_bytes_once"] > 0  # the teacher projector, once per store, counted apart
        assert (m["first_layer_bytes_once"] > 0) == (m["attention"] == "recompute")
        assert m["du_bytes_per_sample"] > m["arrays_bytes_per_sample"] >= sum(g.values()) * 0.999
    assert stored["projection_short"]["tb_vision_per_image"] < stored["projection_short"]["tb_vision_per_sample"]
    assert d["du_bytes_per_sample"] < stored["du_bytes_per_sample"]
    assert stored["arrays"]["attn_first_tv"]["raw_bytes_per_sample"] == u4["arrays"]["attn_first_tv"]["raw_bytes_per_sample"]  # u1 codes
    assert u4["groups_bytes_per_sample"]["attention"] < stored["groups_bytes_per_sample"]["attention"]
    assert np.load(tmp_path / "a.npz")["s000"].shape[0] == 4  # heads of the tiny teacher
    assert "| default |" in (tmp_path / "cache_size.md").read_text()


def test_a_recomputed_row_costs_no_bytes_and_its_error_is_measured():
    t_np = _blocks()
    t = [torch.from_numpy(a) for a in t_np]
    near = near_student(t, 4)
    studs = {"near": (near, fit_adapter(near, t, 4, 8))}
    off = [a * np.float32(1 + 1e-3) for a in t_np]  # a recompute 0.1% off: measured, not assumed exact
    rows = error_table(t_np, studs, {"f32": ENCODINGS["f32"]}, {"exact": t_np, "off": off})
    assert rows["exact"]["bits_per_entry"] == 0 and rows["exact"]["max_abs_err"] == 0
    assert rows["exact"]["students"]["near"]["loss_rel_err"] == 0
    assert rows["off"]["max_abs_err"] > 0 and rows["off"]["students"]["near"]["grad_angle_deg"] > 0
