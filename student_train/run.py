"""One stage launch of `alignkd student-train`, resolved once in the launching process and read by
every rank (teacher_dump's `DumpJob`, for phase 2).

    plan, runs = resolve_runs("workflows/toy.yaml", "short", ["pretrain", "finetune"], out=Path("o"), ...)
    run = complete(runs[0])              # a stage whose init an earlier stage wrote: its tower, now
    path = run.write()                   # <out>/<stage>/student_run.json
    # the deepspeed launcher starts `python -m student_train.launch --run <path>` on every rank:
    run = StudentRun.read(path)          # nothing re-resolved: no overrides, no store check, no hash

The CLI resolves the whole command before its first stage starts: the workflow with the command
line's overrides (`pipeline.workflow.with_overrides`, once), the plan of `student_train.plan`, each
stage's init, and in cached mode the store checked once: its provenance (`check_store`), teacher
weights and manifest (`check_store_identity`), the stage's samples and token ids, the student
tower's fingerprint against a recompute store (`vision_source`), and the samples the loader will
yield. A stage that starts from an earlier stage's export (fine-tuning after pre-training in the
same command) has no tower yet: its run file is written pending, and rank 0 of the launch compares
that export's tower by `complete` once the stage before has written it (`student_train.launch`);
a command's first stage is completed by the CLI. The ranks open the store for its data only.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.workflow import Workflow, with_overrides, workflow_from_dict, workflow_to_dict

if TYPE_CHECKING:
    from student_train.plan import RunPlan, StageInit  # pyarrow: imported where used

RUN_FILE = "student_run.json"  # <out>/<stage>/student_run.json
RUN_VERSION = 1
PENDING = "pending"  # StoreCheck.vision_source of a stage whose init is not written yet


class RunFileError(ValueError):
    """A run file that is not a resolved student run of this version (names the file)."""


@dataclass(frozen=True)
class StoreCheck:
    """What the launching process found in the cache (cached mode)."""

    path: str  # the store, <cache.dir>/<subset>.zarr
    teacher_heads: int  # the store's teacher, for the adapters
    teacher_hidden: int
    # where the loss's teacher projector tokens come from: None (not read), "stored", or
    # "recompute" (this stage's student tower fingerprint equals the store's); PENDING until complete()
    vision_source: str | None
    token_ids_compared: int  # samples of the stage whose token ids matched the manifest's
    missing: int  # samples of the stage not in the store (skipped: train.missing_sample skip)


@dataclass(frozen=True)
class StudentRun:
    """One stage of one run: everything a rank needs, nothing it must work out again."""

    wf: Workflow  # the command line's overrides applied; models.student = init (the data side reads its config)
    subset: str
    stage: str
    init: str  # the checkpoint the stage starts from (MobileVLM layout)
    out: str  # run directory; this stage writes <out>/<stage>/...
    resume: bool
    num_samples: int  # samples of the stage per epoch, across ranks (the store's missing ones left out)
    store: StoreCheck | None = None  # cached mode

    @property
    def path(self) -> Path:
        return Path(self.out) / self.stage / RUN_FILE

    def to_json(self) -> str:
        d = {"version": RUN_VERSION, **asdict(self)}
        d["wf"] = workflow_to_dict(self.wf)
        return json.dumps(d, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> StudentRun:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RunFileError(f"{where}: not a student run file ({exc}); re-run `alignkd student-train`") from exc
        if not isinstance(d, dict) or d.pop("version", None) != RUN_VERSION:
            raise RunFileError(f"{where}: not a student run file of version {RUN_VERSION}; re-run `alignkd student-train`")
        try:
            store = d.pop("store")
            return cls(wf=workflow_from_dict(d.pop("wf"), where), store=StoreCheck(**store) if store else None, **d)
        except (KeyError, TypeError) as exc:
            raise RunFileError(f"{where}: not a student run file ({exc}); re-run `alignkd student-train`") from exc

    def write(self) -> Path:
        """Write the run file atomically (a rank never reads a torn one); returns its path."""
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, path: str | Path, pending_ok: bool = False) -> StudentRun:
        """The run of a run file; one whose tower comparison is still pending is refused unless
        `pending_ok` (rank 0 completing it after the stage before, `student_train.launch`)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise RunFileError(f"{path}: cannot read the student run file ({exc}); it is written by "
                               "`alignkd student-train` before its launch") from exc
        run = cls.from_json(text, str(path))
        if not pending_ok and run.store is not None and run.store.vision_source == PENDING:
            raise RunFileError(f"{path}: the stage's tower was never compared with the store (written before "
                               "`complete`); re-run `alignkd student-train`")
        return run


def complete(run: StudentRun) -> StudentRun:
    """The run with what could not be resolved before an earlier stage wrote its init: the tower of
    that export compared with a recompute store (once, here, not on every rank)."""
    if run.store is None or run.store.vision_source != PENDING:
        return run
    from cache_schema.reader import CacheReader
    from student_train.losses import resolve_loss
    from student_train.teacher_projector import vision_source

    needs = resolve_loss(run.wf.train.loss).teacher_targets()
    prov = CacheReader(run.store.path).provenance
    src = vision_source(prov, run.init, needs.vision_tokens, bool(needs.attn))
    return replace(run, store=replace(run.store, vision_source=src))


def resolve_runs(wf: Workflow, subset: str, stages: list[str], *, out: str | None = None, mode: str | None = None,
                 preset: str | None = None, init: str | None = None, resume: bool = False,
                 max_steps: int | None = None, lr: float | None = None, projector_lr: float | None = None,
                 seed: int | None = None, export_dtype: str | None = None, world_size: int = 1,
                 dry_run: bool = False) -> tuple[RunPlan, list[StudentRun]]:
    """(RunPlan, [StudentRun per stage]) of one command on the loaded workflow `wf`: PlanError /
    StoreMismatchError / MissingSampleError / WorkflowError on what refuses it, before anything
    is written."""
    from student_train.plan import plan_run, stage_init  # pyarrow

    mode = mode or wf.train.mode
    over: dict[str, object] = {"train.mode": mode}
    if preset is not None:
        over["train.loss.preset"] = preset
    elif mode == "sft":
        over["train.loss.preset"] = "sft"  # no teacher: supervised loss only
    if seed is not None:
        over["train.seed"] = seed
    if export_dtype is not None:
        over["train.export_dtype"] = export_dtype
    for st in stages:  # every stage of the command; the plan shows them
        for key, value in (("max_steps", max_steps), ("lr", lr), ("projector_lr", projector_lr)):
            if value is not None:
                over[f"train.{st}.{key}"] = value
    wf = with_overrides(wf, over)
    out_dir = Path(out or wf.train.out_dir)
    inits = {st: stage_init(st, stages, init, out_dir, wf) for st in stages}
    # every stage checked before the first one starts: configs, tokenizers, samples, batches, cache
    plan = plan_run(wf, subset, mode, inits, world_size, out_dir, dry_run=dry_run)
    runs, checked = [], {}
    for sp in plan.stages:
        store, n = _check_stage(wf, plan, sp.stage, sp.init, resume, out_dir, dry_run, checked)
        if n is None:  # a dry run before the dump: the manifest's count
            n = plan.counts.get(sp.stage, {}).get(subset, 0)
        runs.append(StudentRun(wf=with_overrides(wf, {"models.student": sp.init.path}), subset=subset, stage=sp.stage,
                               init=sp.init.path, out=str(out_dir), resume=resume, num_samples=n, store=store))
    return plan, runs


def _check_stage(wf: Workflow, plan: RunPlan, stage: str, init: StageInit, resume: bool, out: Path, dry_run: bool,
                 checked: dict) -> tuple[StoreCheck | None, int | None]:
    """What the plan cannot refuse: the stage's output directory (and, resumed, its metrics) and,
    cached, the store: its provenance, its teacher weights and manifest, its samples, the student's
    tower. A store not dumped yet is a note of a dry run (it comes before the dump) and refuses a
    real run. Returns the store check (cached) and the samples the stage trains on. `checked`
    carries the provenance and identity checks from one stage to the next: a later stage with the
    same student config is not checked again."""
    from student_train.checkpoint import stage_state
    from student_train.plan import PlanError
    from student_train.preflight import count_trained_samples

    state = stage_state(out / stage)
    if state != "empty" and not resume:
        raise PlanError(f"{out / stage} already holds a {state} run: pass --resume to continue it, "
                        "or remove it / choose another --out")
    metrics = out / stage / "metrics.jsonl"
    if resume and state == "partial" and metrics.is_file():  # rank 0 would refuse it, after the launch
        from student_train.metrics import parse_metrics

        parse_metrics(metrics)
    if plan.mode != "cached":
        return None, count_trained_samples(wf, plan.subset, stage, None)
    from cache_schema.reader import CacheReader
    from student_train.data import check_store
    from student_train.losses import resolve_loss
    from student_train.preflight import check_samples_present, check_store_identity, check_token_hashes
    from student_train.teacher_projector import vision_source

    path = wf.cache_path(plan.subset)
    dump = f"alignkd teacher-dump --workflow {wf.source} --subset {plan.subset}"
    if not path.exists():
        if dry_run:
            plan.cache = f"{path} not built yet: run `{dump}` first (then this dry run checks it too)"
            return None, None
        raise PlanError(f"cache {path} not found: run `{dump}` first, or use --mode online / sft")
    written = Path(init.path, "config.json").is_file()  # a later stage's init is written by the stage before it
    # the data side reads the student's config (vocabulary): the stage's init, or the one whose
    # shapes the earlier stage's export will have
    student = init.path if written else init.config_of or wf.models.student
    wf = with_overrides(wf, {"models.student": student})
    reader = CacheReader(path)
    if student not in checked:  # provenance and teacher identity: once per student config
        checked[student] = (check_store(wf, plan.subset, reader),
                            check_store_identity(wf, plan.subset, reader.provenance, path))
    info, notes = checked[student]
    notes = list(notes)
    src = PENDING
    if written:
        needs = resolve_loss(wf.train.loss).teacher_targets()
        src = vision_source(reader.provenance, init.path, needs.vision_tokens, bool(needs.attn))
    missing = check_samples_present(wf, plan.subset, stage, path)
    matched = plan.cache_matched[stage] = check_token_hashes(wf, plan.subset, stage, path)
    if missing:
        notes.append(f"{missing} {stage} sample(s) not in the store are skipped (train.missing_sample: skip)")
    plan.notes += [n for n in notes if n not in plan.notes]  # the second stage finds the same store
    plan.cache = f"{path}: {len(reader.sample_ids)} samples, provenance matches this run"
    store = StoreCheck(path=str(path), teacher_heads=info.teacher_heads, teacher_hidden=info.teacher_hidden,
                       vision_source=src, token_ids_compared=matched, missing=missing)
    return store, count_trained_samples(wf, plan.subset, stage, path)
