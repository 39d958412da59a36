"""The measuring helpers the benchmark tables rest on: memory accounting and JSON hygiene."""

from __future__ import annotations

import math

import torch

from benchmarks.common import clean, summary, tensor_bytes, transient_peak


def test_tensor_bytes_counts_shared_storage_once(seed):
    lin = torch.nn.Linear(64, 32)  # 64·32 + 32 floats
    opt = torch.optim.AdamW(lin.parameters())
    lin(torch.randn(4, 64)).sum().backward()
    opt.step()  # AdamW state: step scalars, exp_avg and exp_avg_sq like the parameters
    n_param = (64 * 32 + 32) * 4
    got = tensor_bytes(lin, opt, {"again": lin.weight, "view": [lin.weight[:3]]})
    assert 3 * n_param <= got <= 3 * n_param + 64  # params + two moments (+ two step counters)


def test_transient_peak_sees_a_temporary_on_cpu():
    def step():
        a = torch.ones(1 << 20)  # 4 MiB, freed before fn returns
        b = a * 2  # another 4 MiB alive at the same time
        return float(b[0])

    peak, method = transient_peak(step, "cpu")
    assert peak is not None, method
    assert 8 << 20 <= peak < 16 << 20


def test_clean_and_summary_are_json_safe():
    assert clean({"a": float("nan"), "b": [1.0, float("inf")], "c": torch.tensor(2.5)}) == {"a": None, "b": [1.0, None], "c": 2.5}
    s = summary([3.0, 1.0, 2.0, 100.0])
    assert s["median"] == 2.5 and s["n"] == 4 and s["p25"] <= s["median"] <= s["p75"]
    assert math.isnan(summary([])["median"])
