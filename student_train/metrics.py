"""Per-optimiser-step metrics: averaged over the step's micro-batches and over the ranks, then
written by rank 0 to `<out>/<stage>/metrics.jsonl` (one JSON object per step), a tqdm bar and,
if installed, TensorBoard."""

from __future__ import annotations

import json
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


class MetricsFileError(ValueError):
    """A metrics.jsonl line before the last one is not a JSON object with a step: the file was
    edited or damaged (a kill tears only the last line), so a resume refuses to guess."""


def parse_metrics(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """(rows, torn) of a metrics.jsonl. A kill while rank 0 appends a row leaves at most the last
    line incomplete: that line is dropped and returned as `torn` (None when the file is whole). Any
    other unreadable line raises MetricsFileError naming the file and line number."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    numbered = [(i, ln) for i, ln in enumerate(lines, 1) if ln.strip()]
    rows: list[dict[str, Any]] = []
    for k, (no, ln) in enumerate(numbered):
        try:
            row = json.loads(ln)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            if k == len(numbered) - 1:
                return rows, ln
            raise MetricsFileError(
                f"{path} line {no} is not a metrics row (a JSON object with an integer 'step'); only the last "
                "line can be torn by a kill: "
                "fix or delete that line (or the file) before --resume") from None
        rows.append(row)
    return rows, None


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: allocated GPU memory on CUDA, else the CPU peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class StepMeter:
    """Accumulates one optimiser step's micro-batches on this rank."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.micro = 0
        self.samples = 0
        self.tokens = 0
        self.t0 = time.perf_counter()

    def add(self, terms: dict[str, float], samples: int, tokens: int) -> None:
        for k, v in terms.items():
            self.sums[k] += v
        self.micro += 1
        self.samples += samples
        self.tokens += tokens

    def reduce(self, device: torch.device) -> dict[str, float]:
        """Mean of every term over micro-batches and ranks; samples, tokens summed over ranks;
        peak memory the max over ranks. One small collective per optimiser step."""
        names = sorted(self.sums)
        elapsed = time.perf_counter() - self.t0
        vals = torch.tensor([self.sums[n] / max(1, self.micro) for n in names] + [self.samples, self.tokens],
                            dtype=torch.float64, device=device)
        mem = torch.tensor([peak_memory_mb(device), elapsed], dtype=torch.float64, device=device)
        world = 1
        if dist.is_available() and dist.is_initialized():
            world = dist.get_world_size()
            dist.all_reduce(vals)
            dist.all_reduce(mem, op=dist.ReduceOp.MAX)
        out = {n: float(v) / world for n, v in zip(names, vals[: len(names)].tolist())}
        samples, tokens = vals[len(names):].tolist()
        peak, elapsed = mem.tolist()
        out.update(samples=int(samples), tokens=int(tokens), samples_per_s=samples / max(elapsed, 1e-9),
                   tokens_per_s=tokens / max(elapsed, 1e-9), step_time_s=elapsed, peak_mem_mb=peak)
        return out


class MetricsWriter:
    """Rank-0 sink. On resume the rows after the resumed step (written by the interrupted run
    past its last checkpoint) are dropped, so the file reads like one uninterrupted run."""

    def __init__(self, path: Path, total_steps: int, start_step: int, enabled: bool, desc: str) -> None:
        self.enabled = enabled
        self.path = path
        self.bar = None
        self.tb = None
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[dict[str, Any]] = []
        if start_step > 0 and path.is_file():
            rows, torn = parse_metrics(path)
            if torn is not None:
                print(f"[student-train] warning: {path}: dropped a torn last line (a kill mid-write): {torn[:60]!r}",
                      file=sys.stderr, flush=True)
            kept = [r for r in rows if r["step"] <= start_step]
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        from tqdm import tqdm

        self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True)
        try:  # optional: only when tensorboard is installed
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(path.parent / "tb"))
        except Exception:  # noqa: BLE001  (ImportError, or a broken install)
            self.tb = None

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        assert self.bar is not None
        self.bar.update(1)
        show = {k: row[k] for k in ("loss", "sup", "rkl", "attn", "focus", "all_tokens") if k in row}
        show = {k: f"{v:.4g}" for k, v in show.items()}
        show.update(tok_s=f"{row['tokens_per_s']:.0f}", mem=f"{row['peak_mem_mb']:.0f}M")
        self.bar.set_postfix(show, refresh=False)
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl (tests, plots); a torn last line (a killed run) is left out."""
    return parse_metrics(Path(path))[0]
