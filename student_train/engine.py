"""The pieces `deepspeed.initialize` takes, built from the workflow: the filled ZeRO-2 config,
the optimiser's parameter groups (projector / LLM / adapters, each with its own LR) and the
warm-up + cosine schedule. Pure functions of (config, module), so they are tested without a
launcher."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.workflow import StageConfig

PRECISIONS = ("fp32", "fp16", "bf16")


class EngineConfigError(ValueError):
    """The DeepSpeed JSON or the stage's batch sizes cannot be combined; the message says how to fix it."""


@dataclass(frozen=True)
class BatchPlan:
    """How one optimiser step's `global_batch` samples split over ranks and micro-steps."""

    global_batch: int
    micro_batch: int
    world_size: int
    grad_accum: int


def batch_plan(stage: StageConfig, world_size: int, where: str = "train.<stage>") -> BatchPlan:
    """global_batch = micro_batch × world_size × grad_accum, exactly (DeepSpeed checks it too)."""
    per_step = stage.micro_batch * world_size
    if stage.micro_batch < 1 or stage.global_batch < 1:
        raise EngineConfigError(f"{where}: micro_batch and global_batch must be >= 1")
    if stage.global_batch % per_step:
        raise EngineConfigError(
            f"{where}.global_batch={stage.global_batch} is not a multiple of micro_batch × ranks = "
            f"{stage.micro_batch} × {world_size}: change global_batch, micro_batch or --num-gpus"
        )
    return BatchPlan(stage.global_batch, stage.micro_batch, world_size, stage.global_batch // per_step)


def fill_ds_config(path: str | Path, plan: BatchPlan, precision: str) -> dict[str, Any]:
    """Read the DeepSpeed JSON and replace its "auto" values from the workflow.

    A value that is set (not "auto") must agree with the workflow: a JSON that silently
    overrode `train.<stage>.global_batch` would make the schedule lie.
    """
    path = Path(path)
    if not path.is_file():
        raise EngineConfigError(f"DeepSpeed config {path} not found (train.deepspeed_config)")
    cfg = json.loads(path.read_text())
    if precision not in PRECISIONS:
        raise EngineConfigError(f"train.precision={precision!r}: use one of {PRECISIONS}")
    stage = cfg.get("zero_optimization", {}).get("stage")
    if stage != 2:
        raise EngineConfigError(f"{path}: zero_optimization.stage is {stage!r}; this recipe is built for ZeRO-2")
    want = {
        "train_micro_batch_size_per_gpu": plan.micro_batch,
        "gradient_accumulation_steps": plan.grad_accum,
        "train_batch_size": plan.global_batch,
    }
    out = copy.deepcopy(cfg)
    for key, value in want.items():
        got = out.get(key, "auto")
        if got != "auto" and got != value:
            raise EngineConfigError(f"{path}: {key}={got} but the workflow gives {value}; set it to \"auto\"")
        out[key] = value
    for key, on in (("fp16", precision == "fp16"), ("bf16", precision == "bf16")):
        section = out.setdefault(key, {})
        if section.get("enabled", "auto") not in ("auto", on):
            raise EngineConfigError(f"{path}: {key}.enabled={section['enabled']} contradicts train.precision={precision}")
        section["enabled"] = on
    zero = out["zero_optimization"]
    if zero.get("reduce_bucket_size") == "auto":
        zero["reduce_bucket_size"] = int(5e8)  # DeepSpeed's own default; HF sets hidden² which is tiny for toys
    leftover = [k for k, v in _walk(out) if v == "auto"]
    if leftover:
        raise EngineConfigError(f"{path}: no workflow value fills {leftover}; give them explicit values")
    if "optimizer" in out or "scheduler" in out:
        raise EngineConfigError(
            f"{path}: remove the 'optimizer'/'scheduler' sections: the recipe builds AdamW with per-group "
            "LRs (train.<stage>.lr / projector_lr) and the warm-up + cosine schedule itself"
        )
    return out


def _walk(d: Any, prefix: str = ""):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _walk(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix, d


# ----------------------------------------------------------------------------- optimiser groups
def vision_tower_of(student: nn.Module) -> nn.Module:
    """The frozen CLIP tower (top-level `vision_tower` in pipeline.models; `model.vision_tower` in
    the released layout's module tree)."""
    tower = getattr(student, "vision_tower", None)
    return tower if tower is not None else student.model.vision_tower


def param_groups(module: nn.Module, stage: StageConfig) -> list[dict[str, Any]]:
    """AdamW groups over the trainable parameters of the trained module (`module.student`, the
    MobileVLM, and `module.criterion.adapters`).

    projector → `projector_lr`; the LLM (embeddings, layers, norm, lm_head) and the adapters → `lr`
    (the paper gives the adapters no LR of their own; they get a separate group so the log shows
    them). Weight decay only on matrices (not on biases / norm gains), the usual LLaMA recipe.
    The frozen vision tower is in no group. Group order is fixed (it is part of the checkpoint).
    """
    owner = {id(p): "projector" for p in module.student.model.mm_projector.parameters()}
    owner.update({id(p): "adapters" for p in module.criterion.adapters.parameters()})
    tower = {id(p) for p in vision_tower_of(module.student).parameters()}
    lrs = {"projector": stage.projector_lr, "llm": stage.lr, "adapters": stage.lr}
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in module.named_parameters():
        if id(p) in tower:
            if p.requires_grad:
                raise AssertionError(f"vision tower parameter {name} is trainable; the recipe freezes it")
            continue
        if not p.requires_grad:
            continue
        decay = p.dim() >= 2 and stage.weight_decay > 0
        buckets.setdefault((owner.get(id(p), "llm"), decay), []).append(p)
    groups = []
    for comp in ("projector", "llm", "adapters"):
        for decay in (True, False):
            params = buckets.get((comp, decay))
            if params:
                groups.append({"name": comp if not decay else f"{comp}/decay", "params": params,
                               "lr": lrs[comp], "weight_decay": stage.weight_decay if decay else 0.0})
    return groups


def build_optimizer(module: nn.Module, stage: StageConfig) -> torch.optim.Optimizer:
    """torch AdamW (ZeRO-2 supports it natively; no JIT-built fused op needed on CPU)."""
    return torch.optim.AdamW(param_groups(module, stage), betas=(0.9, 0.999), eps=1e-8)


# ------------------------------------------------------------------------------------ schedule
def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio)


def lr_factor(step: int, total_steps: int, n_warmup: int) -> float:
    """LR multiplier for optimiser step `step` (0-based): linear warm-up over `n_warmup` steps,
    then cosine from 1 to 0 at `total_steps` (transformers' get_cosine_schedule_with_warmup)."""
    if step < n_warmup:
        return (step + 1) / (n_warmup + 1)  # never exactly 0: the first step moves the weights
    progress = (step - n_warmup) / max(1, total_steps - n_warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """One multiplier for every group, so projector and LLM keep their LR ratio throughout.
    DeepSpeed steps it once per optimiser step and checkpoints its state."""
    n_warmup = warmup_steps(total_steps, warmup_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, n_warmup))


# ------------------------------------------------------------------------ fixed gradient order
class _ReplayGrads(torch.autograd.Function):
    """A scalar whose backward hands precomputed gradients to `params`, all from one node, so
    the parameters' grad-accumulation hooks (where ZeRO-2 buckets and reduces) fire in the same
    order on every rank whatever the forward graph looked like."""

    @staticmethod
    def forward(ctx, grads: list[torch.Tensor], inv_scale: float, *params: torch.Tensor) -> torch.Tensor:
        ctx.grads, ctx.inv_scale = grads, inv_scale
        return params[0].new_zeros((), dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        factor = grad_out * ctx.inv_scale  # DeepSpeed's loss scale × 1/grad_accum, over the scale already in grads
        grads = [g * factor.to(g.dtype) for g in ctx.grads]  # not in place: a grad may be an expanded view
        ctx.grads = None
        return (None, None, *grads)


def local_grads(loss: torch.Tensor, params: list[nn.Parameter], loss_scale: float = 1.0) -> list[torch.Tensor]:
    """d(loss·loss_scale)/d(params) without touching `.grad` (torch.autograd.grad runs no
    accumulation hooks, so ZeRO-2 sees nothing yet); zeros for parameters the graph skipped.
    `loss_scale` (fp16's dynamic scale) is applied first so small gradients do not underflow."""
    grads = torch.autograd.grad(loss * loss_scale if loss_scale != 1.0 else loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def replay_grads(params: list[nn.Parameter], grads: list[torch.Tensor], inv_scale: float = 1.0) -> torch.Tensor:
    """A scalar whose backward delivers `grads` (divided by the scale they carry, times the
    incoming gradient) to `params` from a single node: the accumulation hooks then fire in an
    order that depends on `params` alone, identical on every rank.

    Why: ZeRO-2 fills its reduction buckets in the order gradients arrive and assumes every rank
    has the same order (DeepSpeed issue #2343: otherwise a collective mismatch or, worse, silently
    mixed gradients). A micro-batch without images skips the projector and the adapters, so ranks
    do differ. The recipe computes `local_grads` on the real graph, then runs this node through
    the engine (forward + `engine.backward`, so DeepSpeed's scaling and reduction apply as usual).
    Cost: one extra copy of the local gradients and no backward/communication overlap.
    """
    return _ReplayGrads.apply(grads, inv_scale, *params)
