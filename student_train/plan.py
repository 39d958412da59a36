"""What `alignkd student-train` will do, worked out before any rank starts (no weight is loaded)
and printed by `--dry-run`.

Per stage: the checkpoint it starts from and what its config builds (shapes, parameters), the
samples of that stage in every subset (the manifest's columns alone, no token lists), the batch
geometry (global = micro × ranks × gradient accumulation), optimiser steps, the loss and the
filled DeepSpeed config. Around them: the teacher's config, one vocabulary for data.tokenizer,
teacher and student (`pipeline.preflight`, shared with teacher-dump), and the cache's state.

    inits = {st: stage_init(st, stages, init, out, wf) for st in stages}
    run = plan_run(wf, subset, mode, inits, world_size, out)   # PlanError lists every problem at once
    print(run.describe())                                      # the --dry-run output

Real runs make the same plan and refuse on the same problems; what only a dry run lets pass
(weights absent, the cache not dumped yet) is kept as a note.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipeline.fingerprint import tokenizer_fingerprint
from pipeline.preflight import ModelInfo, check_vocab, format_counts, inspect_model, manifest_counts
from pipeline.workflow import StageConfig, Workflow, WorkflowError


class PlanError(ValueError):
    """The run cannot start; the message lists every problem, each naming the key or path and the fix."""


@dataclass(frozen=True)
class StageInit:
    """Where a stage starts: `path`, described by `label`; `config_of` is where its config is read
    when `path` is written by an earlier stage of the same command (pre-training's export)."""

    path: str
    label: str
    config_of: str | None = None


@dataclass
class StagePlan:
    stage: str
    init: StageInit
    model: ModelInfo | None  # the init checkpoint as its config describes it
    cfg: StageConfig  # train.<stage>
    samples: dict[str, int]  # subset -> samples of this stage (train.<stage>.datasets applied)
    global_batch: int
    micro_batch: int
    world_size: int
    grad_accum: int
    steps_per_epoch: int  # optimiser steps per epoch
    total_steps: int  # optimiser steps of the stage (max_steps, else epochs × steps_per_epoch)
    budget: str  # where total_steps comes from: "max_steps 3" or "1 epoch(s)"
    warmup: int
    out: Path
    deepspeed: dict = field(default_factory=dict)  # the filled ZeRO-2 config
    command: list[str] = field(default_factory=list)  # the launcher command (filled by the CLI)


@dataclass
class RunPlan:
    workflow: str
    subset: str
    mode: str
    loss: str  # the resolved loss, one line
    world_size: int
    teacher: ModelInfo | None
    vocab: str  # the tokenizer check's summary line
    manifest: Path
    counts: dict[str, dict[str, int]]  # stage -> subset -> samples
    cache: str = ""  # the cache's state, one line (cached mode; set by the CLI's store checks)
    cache_matched: dict[str, int] = field(default_factory=dict)  # stage -> samples whose token ids were compared
    stages: list[StagePlan] = field(default_factory=list)  # in the order they run
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """The --dry-run output."""
        teacher = "not used (mode sft)" if self.mode == "sft" else (
            f"{self.teacher.label} = {self.teacher.path}: {self.teacher.summary()}" if self.teacher else "not found")
        lines = [
            f"student-train plan (dry run, nothing is written): workflow {self.workflow}, subset {self.subset!r}, "
            f"mode {self.mode}, {self.world_size} rank(s), stages {' -> '.join(s.stage for s in self.stages)}",
            f"  teacher   {teacher}",
            f"  tokenizer {self.vocab}",
            f"  manifest  {self.manifest}: samples per stage and subset: {format_counts(self.counts)}",
        ]
        if self.cache:
            matched = ", ".join(f"{n} {st}" for st, n in self.cache_matched.items())
            lines.append(f"  cache     {self.cache}" + (f"; token ids match the manifest ({matched} samples)" if matched else ""))
        for s in self.stages:
            init = f"{s.init.path} ({s.init.label})"
            lines += [
                f"  stage {s.stage}",
                f"    init      {init}: {s.model.summary() if s.model else 'config not read'}",
                f"    samples   {s.samples.get(self.subset, 0)} in subset {self.subset} ("
                + ", ".join(f"{k} {v}" for k, v in s.samples.items()) + "; datasets: "
                + (", ".join(s.cfg.datasets) if s.cfg.datasets else f"every {s.stage} dataset") + ")",
                f"    batch     global {s.global_batch} = micro {s.micro_batch} x {s.world_size} rank(s) "
                f"x gradient accumulation {s.grad_accum}",
                f"    steps     {s.steps_per_epoch} optimiser step(s) per epoch; "
                f"{s.budget} = {s.total_steps} step(s), warm-up {s.warmup}; lr {s.cfg.lr:g}, projector lr {s.cfg.projector_lr:g}",
                f"    loss      {self.loss}",
                f"    out       {s.out}",
                f"    deepspeed {json.dumps(s.deepspeed)}",
                f"    launch    {shlex.join(s.command)}",
            ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def stage_init(stage: str, stages: list[str], init: str | None, out: Path, wf: Workflow) -> StageInit:
    """Where a stage starts: fine-tuning after pre-training in the same command starts from its
    export; alone, from --init, else from an earlier pre-training export in --out, else the
    workflow's student."""
    pre = out / "pretrain" / "final"
    if stage == "finetune" and "pretrain" in stages:
        first = stage_init("pretrain", stages, init, out, wf)
        return StageInit(str(pre), f"pre-training's export; shapes of {first.label}", config_of=first.path)
    if init:
        return StageInit(init, "--init")
    if stage == "finetune" and (pre / "config.json").is_file():
        return StageInit(str(pre), "pre-training's export in --out")
    return StageInit(wf.models.student, wf.label("models.student"))


def _check_loss(wf: Workflow, mode: str, problems: list[str]) -> str:
    """train.loss resolved, one line (preset, the active terms with their weights, attention keys);
    --mode sft must not need teacher targets (the recipe would refuse it on every rank)."""
    from student_train.losses import LossConfigError, resolve_loss

    try:
        r = resolve_loss(wf.train.loss)
    except LossConfigError as exc:
        problems.append(str(exc))
        return f"{wf.train.loss.preset} (invalid)"
    needs = r.teacher_targets()
    if mode == "sft" and (needs.attn or needs.focus or needs.vision_tokens or needs.logits):
        problems.append(f"--mode sft trains without a teacher, but loss preset {r.preset!r} needs teacher targets; "
                        "use --preset sft or --mode cached/online")
    terms = " + ".join(f"{getattr(r.weights, t):g}·{t}" for t in r.active)
    attn = f", attention {', '.join(f'{l}.{b}' for l, b in r.attn_keys)}" if r.attn_keys else ""
    return f"preset {r.preset}: {terms}{attn}, adapters {r.adapter_direction}, tail {r.tail_model}"


def _check_teacher(wf: Workflow, mode: str, dry_run: bool, problems: list[str], notes: list[str]) -> ModelInfo | None:
    """Online training loads the teacher; cached training reads only its config (to check the
    store against), so a missing teacher is a note there; sft has none."""
    if mode == "sft":
        return None
    label = wf.label("models.teacher")
    if mode == "cached" and not Path(wf.models.teacher).expanduser().is_dir():
        notes.append(f"{label}: no checkpoint at {wf.models.teacher}; cached training does not need it "
                     "(the store's provenance stands in for its config)")
        return None
    info = inspect_model(wf.models.teacher, label, problems)
    if info is not None and mode == "online" and not info.weight_bytes:
        msg = f"{label} ({info.path}): no weight files, and --mode online runs the teacher"
        (notes if dry_run else problems).append(msg)
    return info


def _check_student(init: StageInit, dry_run: bool, problems: list[str], notes: list[str]) -> ModelInfo | None:
    """The stage's starting checkpoint from its config; its weights are needed by a real run only."""
    info = inspect_model(init.path, init.label, problems, config_of=init.config_of)
    if info is not None and init.config_of is None and not info.weight_bytes:
        msg = f"{init.label} ({info.path}): no weight files (*.safetensors / *.bin)"
        (notes if dry_run else problems).append(msg + ("; the dry run read config.json only, training needs them"
                                                       if dry_run else ""))
    return info


def _check_manifest(wf: Workflow, problems: list[str]) -> dict[str, dict[str, int]]:
    """Samples per stage and subset, and the manifest was tokenised with data.tokenizer."""
    from pipeline.data.contract import read_manifest_meta

    path = Path(wf.data.manifest)
    if not path.is_file():
        problems.append(f"{wf.label('data.manifest')}: no manifest at {path}; build it with "
                        f"`alignkd data build --workflow {wf.source}`")
        return {}
    try:
        built, tok = read_manifest_meta(path).get("tokenizer_fingerprint"), tokenizer_fingerprint(wf.data.tokenizer)
        if built != tok:
            problems.append(f"the manifest {path} was tokenised with tokenizer {built} but data.tokenizer "
                            f"({wf.data.tokenizer}) is {tok}: rebuild the manifest")
    except (FileNotFoundError, ValueError) as exc:  # ValueError: ManifestFormatError, TokenizerLoadError
        problems.append(f"{wf.label('data.tokenizer')}: {exc}")
    try:
        return manifest_counts(path, wf.data.subsets, {st: getattr(wf.train, st).datasets for st in ("pretrain", "finetune")})
    except (ValueError, KeyError, OSError) as exc:
        problems.append(f"{wf.label('data.manifest')} ({path}): {exc}")
        return {}


def _plan_stage(wf: Workflow, subset: str, stage: str, init: StageInit, model: ModelInfo | None,
                counts: dict[str, dict[str, int]], world_size: int, max_steps: int | None, out: Path,
                problems: list[str]) -> StagePlan | None:
    """Batch geometry and steps of one stage (None when its batch sizes do not combine)."""
    from student_train.data import micro_steps_per_epoch
    from student_train.engine import EngineConfigError, batch_plan, fill_ds_config, warmup_steps

    cfg: StageConfig = getattr(wf.train, stage)
    try:
        bp = batch_plan(cfg, world_size, f"train.{stage}")
        ds = fill_ds_config(wf.train.deepspeed_config, bp, wf.train.precision)
    except EngineConfigError as exc:
        problems.append(str(exc))
        return None
    samples = counts.get(stage, {})
    n = samples.get(subset, 0)
    micro = 0
    if counts and n == 0:
        problems.append(f"no {stage} samples in subset {subset!r} of {wf.data.manifest} "
                        f"(train.{stage}.datasets = {cfg.datasets or 'every dataset'})")
    elif counts:
        try:
            micro = micro_steps_per_epoch(n, world_size, bp.micro_batch)
        except ValueError as exc:
            problems.append(f"train.{stage}: {exc}")
    per_epoch = math.ceil(micro / bp.grad_accum)
    steps = max_steps if max_steps is not None else cfg.max_steps
    budget = f"max_steps {steps}"
    if steps <= 0:  # the recipe's rule (StudentTrainRecipe._setup_schedule)
        steps, budget = max(1, math.ceil(cfg.epochs * micro / bp.grad_accum)), f"{cfg.epochs:g} epoch(s)"
    return StagePlan(stage=stage, init=init, model=model, cfg=cfg, samples=samples, global_batch=bp.global_batch,
                     micro_batch=bp.micro_batch, world_size=bp.world_size, grad_accum=bp.grad_accum,
                     steps_per_epoch=per_epoch, total_steps=steps, budget=budget, warmup=warmup_steps(steps, cfg.warmup_ratio),
                     out=out / stage, deepspeed=ds)


def plan_run(wf: Workflow, subset: str, mode: str, inits: dict[str, StageInit], world_size: int, out: Path,
             max_steps: int | None = None, dry_run: bool = False) -> RunPlan:
    """The whole run's plan, checked: configs and tokenizers (no weights), the manifest's samples,
    batch geometry; PlanError listing every problem. The cache is student_train.run's to check (it refuses
    a mismatching store with the store's own errors)."""
    problems: list[str] = []
    notes: list[str] = []
    try:
        wf.subset_limit(subset)
    except WorkflowError as exc:
        problems.append(str(exc))
    loss = _check_loss(wf, mode, problems)
    teacher = _check_teacher(wf, mode, dry_run, problems, notes)
    models: dict[str, ModelInfo | None] = {}
    for st, init in inits.items():
        earlier = next((st0 for st0, i0 in inits.items() if st0 in models and i0.path == init.config_of), None)
        if earlier is not None:  # written by that stage: its shapes, reported once
            m = models[earlier]
            models[st] = m and replace(m, label=init.label, path=Path(init.path), weight_bytes=0, weights_from=earlier)
        else:
            models[st] = _check_student(init, dry_run, problems, notes)
    vocab, bad = check_vocab(wf.data.tokenizer, wf.label("data.tokenizer"), [teacher, *models.values()])
    problems += bad
    counts = _check_manifest(wf, problems)
    stages = [_plan_stage(wf, subset, st, init, models[st], counts, world_size, max_steps, out, problems)
              for st, init in inits.items()]
    if problems:
        raise PlanError(f"{wf.source or 'workflow'}: cannot train subset {subset!r}, {len(problems)} problem(s):\n  - "
                        + "\n  - ".join(problems))
    return RunPlan(workflow=wf.source, subset=subset, mode=mode, loss=loss, world_size=world_size, teacher=teacher,
                   vocab=vocab, manifest=Path(wf.data.manifest), counts=counts,
                   stages=[s for s in stages if s is not None], notes=notes)
