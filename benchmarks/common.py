"""Shared helpers: clocks that respect CUDA's asynchrony, robust statistics, memory accounting,
environment facts (the load average matters on a shared machine), and the flag list the report
turns into "this number is bad, because ..." lines.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch


# ---- time ---------------------------------------------------------------------------------------
class Clock:
    """perf_counter that first waits for the device (a CUDA kernel launch returns immediately)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.cuda = torch.device(device).type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def summary(xs: list[float]) -> dict[str, float]:
    """Median and quartiles of repeated timings (the median resists the neighbours' load spikes)."""
    xs = sorted(xs)
    if not xs:
        return {"median": float("nan"), "p25": float("nan"), "p75": float("nan"), "n": 0}
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return {"median": statistics.median(xs), "p25": q[0], "p75": q[2], "n": len(xs)}


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or not math.isfinite(a) or not math.isfinite(b):
        return None
    return a / b


# ---- memory -------------------------------------------------------------------------------------
def tensor_bytes(*objs: Any) -> int:
    """Bytes of the distinct tensor storages reachable from modules, optimizers, tensors and
    (nested) dataclasses / dicts / lists; a storage shared by two objects counts once."""
    seen: dict[tuple, int] = {}

    def add(t: torch.Tensor) -> None:
        s = t.untyped_storage()
        seen[(t.device.type, t.device.index, s.data_ptr())] = s.nbytes()

    def walk(o: Any) -> None:
        if o is None:
            return
        if isinstance(o, torch.Tensor):
            add(o)
        elif isinstance(o, torch.nn.Module):
            for t in list(o.parameters()) + list(o.buffers()):
                add(t)
        elif isinstance(o, torch.optim.Optimizer):
            for st in o.state.values():
                walk(st)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)
        elif dataclasses.is_dataclass(o) and not isinstance(o, type):
            for f in dataclasses.fields(o):
                walk(getattr(o, f.name))

    for o in objs:
        walk(o)
    return sum(seen.values())


def transient_peak(fn: Callable[[], Any], device: torch.device | str) -> tuple[int | None, str]:
    """Peak bytes allocated *during* fn() above what was allocated before it → (bytes, method).

    CUDA: max_memory_allocated after a reset (the caching allocator's exact tensor accounting).
    CPU: the profiler's memory timeline (every tensor allocation and free, in order), so the
    number is the same kind as CUDA's and is not blurred by glibc keeping freed pages in RSS.
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, "torch.cuda.max_memory_allocated"
    try:
        from torch.profiler import ProfilerActivity, profile
        from torch.profiler._memory_profiler import Action, MemoryProfile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True):
            pass  # warm the profiler itself up outside the measured window
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True) as prof:
            fn()
        cur = peak = 0
        for _, action, _, size in MemoryProfile(prof.profiler.kineto_results).timeline:
            if action == Action.CREATE:
                cur += size
            elif action == Action.DESTROY:
                cur -= size
            peak = max(peak, cur)
        return peak, "torch.profiler memory timeline (CPU tensor allocations)"
    except Exception as exc:  # noqa: BLE001 — a private API: degrade to "not measured" rather than fail the run
        fn()
        return None, f"not measured ({type(exc).__name__}: {exc})"


# ---- environment --------------------------------------------------------------------------------
def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def env_info(device: str = "cpu") -> dict:
    import numpy
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": numpy.__version__, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "loadavg": loadavg(), "device": device, "machine": platform.machine()}
    try:
        import deepspeed

        info["deepspeed"] = deepspeed.__version__
    except Exception:  # noqa: BLE001 — optional here
        pass
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


@contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op threads (a teacher actor runs with its CPU share)."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ---- flags and JSON -----------------------------------------------------------------------------
class Flags:
    """Bad numbers with the reason, collected by each section and printed by the report."""

    def __init__(self) -> None:
        self.items: list[dict] = []

    def add(self, section: str, what: str, value: float | None, limit: str, why: str) -> None:
        self.items.append({"section": section, "what": what, "value": value, "limit": limit, "why": why})


def clean(o: Any) -> Any:
    """JSON-safe copy: non-finite floats → None (json would write NaN, which is not JSON)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [clean(v) for v in o]
    if hasattr(o, "item") and callable(o.item) and getattr(o, "ndim", 1) == 0:
        return clean(o.item())
    return o


def mb(x: float | None) -> str:
    return "–" if x is None else f"{x / 2**20:,.1f}"


def fmt(x: float | None, spec: str = ".3g") -> str:
    return "–" if x is None else format(x, spec)


def write_outputs(out: str | Path, name: str, rep: dict, markdown: str) -> None:
    """`<out>/<name>.json` (the numbers) and `<out>/<name>.md` (the table), and the table on stdout."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(rep, indent=1))
    (out / f"{name}.md").write_text(markdown)
    print(markdown)
