"""`benchmarks.gpu_check`: exits cleanly without CUDA; its code path runs end to end on tiny CPU shapes."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu_check


def test_without_cuda_it_says_so_and_measures_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a GPU machine
    out = tmp_path / "gpu"
    assert gpu_check.main(["--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "nothing was measured" in err
    assert not out.exists()


@pytest.mark.slow
def test_tiny_cpu_run_writes_the_tables(tmp_path):
    out = tmp_path / "gpu"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--steps", "1", "--warmup", "1", "--out", str(out)]) == 0
    rep = json.loads((out / "gpu_bench.json").read_text())
    (res,) = rep["settings"].values()  # bf16 only on CPU
    assert set(res["modes"]) == {"sft", "cached", "online"}
    assert all(v is not None and v > 0 for v in res["ratios"].values())
    assert rep["deepspeed"]["bf16"]["step_s"]["median"] > 0 and rep["deepspeed"]["bf16"]["zero_stage"] == 2
    assert rep["reader"]["workers_needed"] > 0
    assert rep["cache"]["projector_tokens"] == rep["cache"]["attention"] == "recompute"  # the step rebuilds both
    md = (out / "gpu_bench.md").read_text()
    assert "DeepSpeed ZeRO-2" in md and "| cached |" in md
