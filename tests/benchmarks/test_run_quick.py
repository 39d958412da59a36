"""`python -m benchmarks.run --quick` end to end (real world, real dump, real loader, real losses):
bench.json has every section with finite numbers and the ratios the report is about, and
bench.md renders every section. A structure check: quick numbers are not meaningful."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _numbers(o, path=""):
    """Every number in a JSON tree, with its path."""
    if isinstance(o, bool):
        return
    if isinstance(o, (int, float)):
        yield path, o
    elif isinstance(o, dict):
        for k, v in o.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(o, list):
        for i, v in enumerate(o):
            yield from _numbers(v, f"{path}[{i}]")


def _positive(x, what):
    assert isinstance(x, (int, float)) and math.isfinite(x) and x > 0, f"{what} = {x!r}"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out), "--work", str(out / "work")],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text()


@pytest.mark.slow
def test_quick_json_structure(quick):
    rep, _ = quick
    assert {"meta", "train_cost", "dump_cost", "data_path", "storage", "fidelity", "flags"} <= set(rep)
    assert rep["meta"]["quick"] is True
    for path, x in _numbers(rep):
        assert math.isfinite(x), path
    for name in ("toy", "ratio"):
        s = rep["train_cost"]["settings"][name]
        assert set(s["modes"]) == {"sft", "cached", "online"}
        for mode, m in s["modes"].items():
            _positive(m["step_s"]["median"], f"{name}.{mode}.step")
            _positive(m["memory"]["peak_bytes"], f"{name}.{mode}.peak_bytes")
            assert set(m["phases_s"]) == {"targets", "forward", "loss", "backward", "optimizer"}
        for k in ("time_cached_over_sft", "time_online_over_cached", "mem_cached_over_sft", "mem_online_over_cached"):
            _positive(s["ratios"][k], f"{name}.{k}")
        assert s["modes"]["online"]["memory"]["persistent_bytes"] > s["modes"]["cached"]["memory"]["persistent_bytes"]
    d = rep["data_path"]
    for k in ("loader_over_student", "reader_over_student"):
        _positive(d["ratios"][k], k)
    _positive(d["real_shapes_reader"]["samples_per_s"], "real-shape reader")
    assert 0 <= d["fed"]["stall_fraction"] <= 1
    dc = rep["dump_cost"]
    _positive(dc["ratios"]["in-process / forward"], "dump/forward")
    assert "skipped" in dc["ray"]  # quick mode leaves Ray out
    st = rep["storage"]
    for tgt in ("attention", "logits", "vision"):
        t = st["toy_store"]["targets"][tgt]
        if t["recomputed"]:  # cache v2's default dump: the student rebuilds it, nothing is stored
            assert t["bytes_per_sample"] == 0 and t["ratio_vs_naive"] is None, tgt
        else:
            _positive(t["ratio_vs_naive"], f"toy {tgt}")
    assert st["toy_store"]["targets"]["logits"]["recomputed"] is False
    assert set(st["real_shapes"]["projection"]) == {"short", "long"}
    rows = rep["fidelity"]["rkl"]["rows"]
    assert [r["k"] for r in rows] == [8, 16, 32, 64, 128]
    assert rows[-1]["angle_bucket_deg"] < rows[0]["angle_bucket_deg"]  # more of the distribution, less error
    assert abs(rep["fidelity"]["rkl"]["teacher_entropy_nats"] - 1.3) < 0.1
    enc = rep["fidelity"]["attention"]["encodings"]
    assert set(enc) == {"f32", "f16", "u8", "u8sqrt"} and enc["f32"]["fitted"]["grad_rel_err"] == 0
    for f in rep["flags"]:
        assert f["why"] and f["section"] in {"train_cost", "dump_cost", "data_path", "storage", "fidelity"}


@pytest.mark.slow
def test_quick_markdown_has_every_section(quick):
    rep, md = quick
    for head in ("## Flagged numbers", "## 1. Training cost", "## 2. Data path", "## 3. Dump cost", "## 4. Storage",
                 "## 5. Fidelity", "## 6. GPU path"):
        assert head in md, head
    for f in rep["flags"]:
        assert f["what"] in md  # every bad number is named in the report, with its reason
