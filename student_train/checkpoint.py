"""DeepSpeed training checkpoints of one stage, in `<out>/<stage>/checkpoints/step<N>/`.

A checkpoint is what `engine.save_checkpoint` writes (module incl. adapters, ZeRO-2 optimiser
partitions of every rank, LR scheduler) plus:
* client state (rank 0): optimiser step, global micro-step (the data position: the sampler is a
  pure function of it), the run's seed and batch plan, to refuse an incompatible resume;
* `rng_rank<r>.pt` per rank: python / numpy / torch (CPU and accelerator) generator states, so
  dropout and anything random continue exactly where the interrupted run stopped.
The `latest` file names the newest complete tag. DeepSpeed's own writer puts it down before the
closing barrier (a rank may still be writing its optimiser shard), so we write it ourselves after
the barrier, atomically: a run killed mid-save resumes from the previous checkpoint.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

TAG_PREFIX = "step"


class ResumeError(RuntimeError):
    """A checkpoint cannot continue this run (missing, or saved with another batch plan)."""


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{step}"


def latest_tag(ckpt_dir: Path) -> str | None:
    f = ckpt_dir / "latest"
    return f.read_text().strip() if f.is_file() else None


def stage_state(stage_dir: Path) -> str:
    """"done" (final/ exported), "partial" (a checkpoint to resume), or "empty"."""
    if (stage_dir / "final" / "config.json").is_file():
        return "done"
    if latest_tag(stage_dir / "checkpoints") is not None:
        return "partial"
    return "empty"


def rng_state() -> dict[str, Any]:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def save(engine, ckpt_dir: Path, step: int, client: dict[str, Any], keep: int = 0) -> str:
    """Collective: every rank calls it. Returns the tag. keep > 0: rank 0 then deletes all but the
    newest `keep` tags (`prune`)."""
    tag = tag_for(step)
    (ckpt_dir / tag).mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), ckpt_dir / tag / f"rng_rank{engine.global_rank}.pt")
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client, save_latest=False)  # ends in a barrier
    if engine.global_rank == 0:
        tmp = ckpt_dir / "latest.tmp"
        tmp.write_text(tag)
        os.replace(tmp, ckpt_dir / "latest")
        prune(ckpt_dir, keep)  # after `latest` names the new tag: a kill here leaves one tag more, never none
    if dist.is_initialized():
        dist.barrier()
    return tag


def load(engine, ckpt_dir: Path, expect: dict[str, Any]) -> dict[str, Any]:
    """Restore module, optimiser, scheduler and this rank's RNG from the latest tag; return the
    client state. `expect`: client-state values that must match (batch plan, seed, world size)."""
    tag = latest_tag(ckpt_dir)
    if tag is None:
        raise ResumeError(f"--resume: no checkpoint in {ckpt_dir} (no 'latest' file); run without --resume")
    path, client = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if path is None:
        raise ResumeError(f"--resume: DeepSpeed could not load {ckpt_dir / tag}")
    bad = {k: (client.get(k), v) for k, v in expect.items() if client.get(k) != v}
    if bad:
        detail = ", ".join(f"{k}: saved {s!r}, now {n!r}" for k, (s, n) in bad.items())
        raise ResumeError(f"--resume from {ckpt_dir / tag}: the run differs ({detail}); resume with the same settings")
    rng = ckpt_dir / tag / f"rng_rank{engine.global_rank}.pt"
    if not rng.is_file():
        raise ResumeError(f"--resume: {rng} missing (checkpoint saved with another number of ranks?)")
    set_rng_state(torch.load(rng, weights_only=False))
    return client


def prune(ckpt_dir: Path, keep: int) -> list[str]:
    """Delete every `step<N>` tag but the newest `keep` (0: keep all) and the one `latest` names;
    returns the names deleted. A ZeRO-2 checkpoint of even a 2-layer real-width slice is ~5 GB, so
    a run saving every few hundred steps filled its disk while only the newest is ever resumed from."""
    if keep <= 0 or not ckpt_dir.is_dir():
        return []
    latest = latest_tag(ckpt_dir)
    tags = sorted((p for p in ckpt_dir.iterdir()
                   if p.is_dir() and p.name.startswith(TAG_PREFIX) and p.name[len(TAG_PREFIX):].isdigit()),
                  key=lambda p: int(p.name[len(TAG_PREFIX):]))
    old = [p for p in tags[:-keep] if p.name != latest]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return [p.name for p in old]
