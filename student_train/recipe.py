"""Phase 2 recipe: one training stage of the student on DeepSpeed ZeRO-2 (torchtune style:
`setup` → `train` → `cleanup`, built from `_setup_*` and `_loss_step` helpers). Runs on every
rank under the `deepspeed` launcher (see launch.py), on the `StudentRun` that `alignkd student-train`
resolved once (student_train/run.py: workflow with its overrides, init, the store's check).

    trained module = TrainModule(student MobileVLM, AlignKDLoss(adapters))
      ├─ student's CLIP vision tower  frozen (requires_grad False, eval mode), in no param group
      ├─ student.model.mm_projector   AdamW group "projector", lr = train.<stage>.projector_lr
      ├─ student (LLM, lm_head)       group "llm",       lr = train.<stage>.lr
      └─ criterion.adapters           group "adapters",  lr = train.<stage>.lr (trained; not exported)

Outputs, in `<out>/<stage>/` (beside the CLI's `student_run.json`): `checkpoints/step<N>/` (DeepSpeed, every `save_every` steps and at
the end), `metrics.jsonl` (one row per optimiser step), `run.json` (what ran), `final/` (the
exported student + tokenizer); `<out>/` itself then also holds the last exported stage, so a run
directory is a loadable checkpoint (e.g. `--out runs/toy/teacher` for the toy teacher).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from torch import nn

from pipeline.constants import IMAGE_TOKEN_INDEX
from pipeline.models import CaptureSpec, MobileVLM
from student_train import checkpoint as ckpt
from student_train.adapters import Adapters
from student_train.data import StudentBatch, build_train_loader, micro_steps_per_epoch
from student_train.engine import (
    batch_plan,
    build_optimizer,
    build_scheduler,
    fill_ds_config,
    local_grads,
    replay_grads,
    vision_tower_of,
)
from student_train.export import export_student, publish
from student_train.losses import AlignKDLoss, NonFiniteLossError, TeacherBatch, resolve_loss
from student_train.metrics import MetricsWriter, StepMeter
from student_train.run import StudentRun
from student_train.teacher_projector import TeacherFirstLayer, TeacherTokens, build_teacher_recompute

ADAPTERS_FILE = "adapters.pt"  # <out>/<stage>/adapters.pt: the trained adapters, carried to the next stage
EXPORT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class NonFiniteTrainingError(FloatingPointError):
    """A loss term went NaN/inf; the message names the term, the step and the batch's samples."""


class TrainModule(nn.Module):
    """What DeepSpeed wraps: the student and the criterion (which owns the adapters), so one
    engine trains, reduces and checkpoints both."""

    def __init__(self, student: MobileVLM, criterion: AlignKDLoss, spec: CaptureSpec,
                 teacher_tokens: TeacherTokens | None = None, teacher_attention: TeacherFirstLayer | None = None) -> None:
        super().__init__()
        self.student, self.criterion, self.spec = student, criterion, spec
        # a recompute store: the teacher's projector tokens from this student's tower features, and
        # (attention: recompute) its first-layer attention from them (plain attributes, not
        # submodules: see TeacherTokens)
        self.teacher_tokens, self.teacher_attention = teacher_tokens, teacher_attention
        if teacher_tokens is not None:
            teacher_tokens.capture(vision_tower_of(student))

    def train(self, mode: bool = True) -> "TrainModule":
        super().train(mode)
        vision_tower_of(self.student).eval()  # frozen tower: no dropout, whatever the engine says
        return self

    def forward(self, batch: StudentBatch | None = None, replay: tuple | None = None):
        """batch → (loss, terms); or replay=(params, grads, inv_scale) → the scalar that hands
        precomputed gradients to DeepSpeed in a fixed order (engine.replay_grads)."""
        if replay is not None:
            return replay_grads(*replay)
        al = self.student_forward(batch)
        return self.criterion(al, self.teacher_batch(batch))

    def student_forward(self, batch: StudentBatch):
        """The student's forward_align of `batch` (its tower's features kept for teacher_batch)."""
        if self.teacher_tokens is not None:
            self.teacher_tokens.reset()
        return self.student.forward_align(input_ids=batch.input_ids, images=batch.images,
                                          attention_mask=batch.attention_mask, labels=batch.labels, spec=self.spec)

    def teacher_batch(self, batch: StudentBatch) -> TeacherBatch:
        """The batch's teacher targets; from a recompute store, with the teacher's projector tokens
        rebuilt from the features of the student_forward just run."""
        teacher = batch.teacher if batch.teacher is not None else TeacherBatch()
        if self.teacher_tokens is None:
            return teacher
        has_img = (batch.input_ids == IMAGE_TOKEN_INDEX).any(1)
        extra = {}
        if self.teacher_attention is not None:
            extra["attn"] = {**teacher.attn, **self.teacher_attention.attention(batch.input_ids, batch.images,
                                                                                batch.attention_mask)}
        if self.teacher_tokens.needed:
            extra["vision_tokens"] = self.teacher_tokens.tokens(has_img)
        return dataclasses.replace(teacher, **extra)


class StudentTrainRecipe:
    def __init__(self, run: StudentRun) -> None:
        """`run`: the stage as the launching process resolved it (student_train.run), read from
        its run file; nothing of it is worked out again here."""
        self.run = run
        wf = self.wf = run.wf
        t = wf.train
        self.stage_cfg = getattr(t, run.stage)
        self.resolved = resolve_loss(t.loss)
        needs = self.resolved.teacher_targets()
        if t.mode == "sft" and (needs.attn or needs.focus or needs.vision_tokens or needs.logits):
            raise ValueError(f"--mode sft trains without a teacher, but loss preset {t.loss.preset!r} needs "
                             f"teacher targets ({needs}); use --preset sft or --mode cached/online")
        name = t.export_dtype  # --export-dtype applied by the launching process
        if name != "auto" and name not in EXPORT_DTYPES:
            raise ValueError(f"export dtype {name!r}: use auto, {', '.join(EXPORT_DTYPES)} (--export-dtype / train.export_dtype)")
        self.export_dtype = EXPORT_DTYPES.get(t.precision, torch.float32) if name == "auto" else EXPORT_DTYPES[name]
        self.stage_dir = Path(run.out) / run.stage
        self.ckpt_dir = self.stage_dir / "checkpoints"
        self.final_dir = self.stage_dir / "final"
        self.done = False
        self.step = self.micro_step = 0  # optimiser steps / global micro-steps done (the data position)
        self.writer: MetricsWriter | None = None
        self.online = None

    # ------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        self._setup_distributed()
        state = ckpt.stage_state(self.stage_dir)
        if state == "done" and self.run.resume:
            self.done = True  # nothing to do; `alignkd student-train --resume` moves on
            self._log(f"{self.run.stage}: already exported to {self.final_dir}; skipping")
            return
        if state != "empty" and not self.run.resume:
            raise ckpt.ResumeError(f"{self.stage_dir} already holds a {state} run: pass --resume to continue it, "
                                   "or remove the directory / choose another --out")
        teacher_heads, teacher_hidden = self._setup_teacher()
        self._setup_schedule()
        self.module = self._setup_model(teacher_heads, teacher_hidden)
        self.engine = self._setup_engine(self.module)
        self.step, self.micro_step = self._maybe_resume(state)
        if self.step == 0:  # per-rank streams for anything random in training (a resume restores them)
            ckpt.seed_everything(self.wf.train.seed * 1000 + 7919 * self.rank)
        self.loader = self._setup_data(self.micro_step, self.total_steps * self.plan.grad_accum)
        self.writer = MetricsWriter(self.stage_dir / "metrics.jsonl", self.total_steps, self.step,
                                    enabled=self.rank == 0, desc=f"{self.run.stage} ({self.wf.train.mode})")
        self._write_run_info()

    def _setup_schedule(self) -> None:
        """Batch plan and optimiser steps: max_steps if set, else epochs over this stage's samples."""
        self.num_samples = self.run.num_samples  # counted once by the launching process
        self.plan = batch_plan(self.stage_cfg, self.world_size, f"train.{self.run.stage}")
        self.micro_per_epoch = micro_steps_per_epoch(self.num_samples, self.world_size, self.plan.micro_batch)
        if self.stage_cfg.max_steps > 0:
            self.total_steps = self.stage_cfg.max_steps
        else:
            self.total_steps = max(1, math.ceil(self.stage_cfg.epochs * self.micro_per_epoch / self.plan.grad_accum))

    def _setup_distributed(self) -> None:
        acc = get_accelerator()
        deepspeed.init_distributed(dist_backend=acc.communication_backend_name())
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if acc.device_name() != "cpu":
            acc.set_device(local_rank)
        self.device = torch.device(acc.device_name(local_rank) if acc.device_name() != "cpu" else "cpu")

    def _setup_teacher(self) -> tuple[int | None, int | None]:
        """Cached: open the store and refuse a mismatching one before anything is built.
        Online: load the frozen teacher. Returns the teacher's (heads, hidden) for the adapters."""
        wf, mode = self.wf, self.wf.train.mode
        self.reader, self.vision_source = None, None
        if mode == "cached":
            from cache_schema.reader import CacheReader

            store = self.run.store
            if store is None:
                raise ValueError(f"{self.run.path}: a cached run without its store check; re-run `alignkd student-train`")
            path = Path(store.path)
            if not path.exists():
                raise FileNotFoundError(f"cache {path} not found: run `alignkd teacher-dump --workflow {wf.source} "
                                        f"--subset {self.run.subset}`, or train with --mode online / sft")
            # checked by the launching process (provenance, teacher, token ids, this student's tower):
            # the ranks read the store's data only
            self.reader = CacheReader(path)
            self.vision_source = store.vision_source
            return store.teacher_heads, store.teacher_hidden
        if mode == "online":
            from student_train.online import OnlineTeacher

            dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(wf.train.precision, torch.float32)
            self.online = OnlineTeacher(wf, self.device, dtype, needs=self.resolved.teacher_targets())
            return self.online.heads, self.online.hidden_size
        return None, None

    def _setup_model(self, teacher_heads: int | None, teacher_hidden: int | None) -> TrainModule:
        ckpt.seed_everything(self.wf.train.seed)  # same adapter init on every rank (DeepSpeed broadcasts anyway)
        student = MobileVLM.from_pretrained(self.run.init, dtype=torch.float32)  # DeepSpeed casts for fp16/bf16
        vision_tower_of(student).requires_grad_(False)
        if self.wf.train.gradient_checkpointing:
            student.gradient_checkpointing_enable()  # our wrapper: the non-deprecated name where it exists
        cfg = student.config
        adapters = Adapters.for_loss(self.resolved, cfg.num_attention_heads, teacher_heads or cfg.num_attention_heads,
                                     cfg.hidden_size, teacher_hidden or cfg.hidden_size)
        self._carry_adapters(adapters)
        keys = self.resolved.attn_keys
        spec = CaptureSpec(layers=tuple(dict.fromkeys(l for l, _ in keys)), blocks=tuple(dict.fromkeys(b for _, b in keys)))
        tokens, attention = build_teacher_recompute(self.reader, self.resolved, self.vision_source, self.device)
        return TrainModule(student, AlignKDLoss(self.resolved, adapters), spec, tokens, attention).to(self.device)

    def _carry_adapters(self, adapters: Adapters) -> None:
        """Start from the adapters the previous stage trained (`<init>/../adapters.pt`, written by
        `_export` beside the stage's `final/`), so fine-tuning continues the alignment pre-training
        learnt instead of restarting it from the initialisation (L_attn jumped 0.097 → 0.118 at the
        stage boundary when it did). Only adapters of the same name and shape are carried."""
        src = Path(self.run.init).parent / ADAPTERS_FILE
        if not src.is_file() or not len(list(adapters.parameters())):
            return
        saved = torch.load(src, map_location="cpu", weights_only=True)
        own = adapters.state_dict()
        carried = {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}
        adapters.load_state_dict(carried, strict=False)
        self._log(f"{self.run.stage}: adapters carried from {src} ({len(carried)}/{len(own)} tensors)")

    def _setup_engine(self, module: TrainModule):
        self.ds_config = fill_ds_config(self.wf.train.deepspeed_config, self.plan, self.wf.train.precision)
        optimizer = build_optimizer(module, self.stage_cfg)
        self.group_names = [g["name"] for g in optimizer.param_groups]
        self.trainable = [p for g in optimizer.param_groups for p in g["params"]]  # same order on every rank
        scheduler = build_scheduler(optimizer, self.total_steps, self.stage_cfg.warmup_ratio)
        engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, lr_scheduler=scheduler,
                                               config=self.ds_config)
        self.compute_dtype = engine.module.student.dtype
        return engine

    def _client_state(self, step: int) -> dict[str, Any]:
        p = self.plan
        return {"step": step, "micro_step": self.micro_step, "seed": self.wf.train.seed, "world_size": p.world_size,
                "micro_batch": p.micro_batch, "grad_accum": p.grad_accum, "total_steps": self.total_steps,
                "subset": self.run.subset, "stage": self.run.stage, "mode": self.wf.train.mode,
                "preset": self.resolved.preset}

    def _maybe_resume(self, state: str) -> tuple[int, int]:
        if not (self.run.resume and state == "partial"):
            return 0, 0
        expect = {k: v for k, v in self._client_state(0).items() if k not in ("step", "micro_step")}
        client = ckpt.load(self.engine, self.ckpt_dir, expect)
        self._log(f"{self.run.stage}: resumed at step {client['step']} from {self.ckpt_dir}")
        return client["step"], client["micro_step"]

    def _setup_data(self, start: int, end: int):
        loader, _ = build_train_loader(self.wf, self.run.subset, self.run.stage, self.wf.train.mode, self.rank,
                                       self.world_size, self.plan.micro_batch, self.wf.train.seed,
                                       start_step=start, end_step=end, reader=self.reader, store_checked=True)
        return loader

    def _write_run_info(self) -> None:
        if self.rank != 0:
            return
        r = self.run
        info = {"args": {"subset": r.subset, "stage": r.stage, "init": r.init, "out": r.out, "resume": r.resume},
                "run_file": str(r.path), "pid": os.getpid(),  # a command's stages share it: one launch
                "workflow": self.wf.source, "mode": self.wf.train.mode,
                "loss": dataclasses.asdict(self.resolved), "plan": dataclasses.asdict(self.plan),
                "num_samples": self.num_samples, "micro_steps_per_epoch": self.micro_per_epoch,
                "total_steps": self.total_steps, "param_groups": self.group_names, "deepspeed_config": self.ds_config,
                "precision": self.wf.train.precision, "versions": {"torch": torch.__version__,
                                                                    "deepspeed": deepspeed.__version__}}
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        (self.stage_dir / "run.json").write_text(json.dumps(info, indent=2, default=str) + "\n")

    # ------------------------------------------------------------------------------- train
    def _loss_step(self, batch: StudentBatch) -> tuple[torch.Tensor, dict[str, float], int]:
        """Forward + loss of one micro-batch → (loss with grad, terms, embedded tokens)."""
        batch = batch.to(self.device, dtype=self.compute_dtype)
        if self.online is not None:
            batch.teacher = self.online.targets(batch)
        err, loss, terms = None, None, {}
        # fixed gradient order: the real forward runs outside the engine (its output hooks would
        # start DeepSpeed's backward); the engine sees the replay forward in _backward instead
        forward = self.engine.module if self.wf.train.fixed_grad_order else self.engine
        try:
            loss, terms = forward(batch)
        except NonFiniteLossError as e:
            err = e
        self._agree_finite(err, batch.sample_ids)
        n_img = int((batch.input_ids == IMAGE_TOKEN_INDEX).any(1).sum())
        tokens = int(batch.attention_mask.sum()) + n_img * (self.module.student.num_vision_tokens - 1)
        return loss, terms, tokens

    def _agree_finite(self, err: NonFiniteLossError | None, sample_ids: list[str]) -> None:
        """Stop every rank together (a lone rank leaving would hang the others in the gradient
        all-reduce), naming the offending term and samples."""
        flag = torch.tensor([0.0 if err is None else 1.0], device=self.device)
        if self.world_size > 1:
            dist.all_reduce(flag)
        if flag.item() == 0:
            return
        mine = None if err is None else {"rank": self.rank, "term": err.term, "value": err.value, "samples": sample_ids}
        bad = [mine]
        if self.world_size > 1:
            bad = [None] * self.world_size
            dist.all_gather_object(bad, mine)
        bad = [b for b in bad if b is not None]
        detail = "; ".join(f"rank {b['rank']}: term {b['term']!r} = {b['value']} on samples {b['samples']}" for b in bad)
        raise NonFiniteTrainingError(
            f"non-finite loss at optimiser step {self.step + 1} (micro-step {self.micro_step}) of {self.run.stage}: "
            f"{detail}. Inspect them with `alignkd cache show`, or lower train.{self.run.stage}.lr"
        )

    def train(self) -> None:
        if self.done:
            return
        engine, g = self.engine, self.plan.grad_accum
        engine.train()
        meter = StepMeter()
        saved = self.step if self.step > 0 else -1  # a resumed run's checkpoint already exists
        for batch in self.loader:
            if self.step >= self.total_steps:
                break
            loss, terms, tokens = self._loss_step(batch)
            self._backward(loss)
            boundary = (self.micro_step + 1) % g == 0
            lrs = engine.get_lr() if boundary else None  # the LR this step uses (the scheduler moves in step())
            engine.step()
            meter.add(terms, len(batch), tokens)
            self.micro_step += 1
            if not boundary:
                continue
            self.step += 1
            self._log_step(meter.reduce(self.device), lrs)
            meter.reset()
            if self.wf.train.save_every > 0 and self.step % self.wf.train.save_every == 0:
                ckpt.save(engine, self.ckpt_dir, self.step, self._client_state(self.step), self.wf.train.keep_checkpoints)
                saved = self.step
        if self.writer is not None:
            self.writer.close()  # the bar ends here, before the export's own messages
        if saved != self.step:
            ckpt.save(engine, self.ckpt_dir, self.step, self._client_state(self.step), self.wf.train.keep_checkpoints)
        self._export()

    def _backward(self, loss: torch.Tensor) -> None:
        if not self.wf.train.fixed_grad_order:
            self.engine.backward(loss)
            return
        scale = float(self.engine.optimizer.loss_scale) if self.wf.train.precision == "fp16" else 1.0
        grads = local_grads(loss, self.trainable, scale)
        self.engine.backward(self.engine(replay=(self.trainable, grads, 1.0 / scale)))

    def _log_step(self, row: dict[str, float], lrs: list[float]) -> None:
        row = {"step": self.step, "epoch": self.micro_step / self.micro_per_epoch, **row}
        row.update({f"lr/{n}": lr for n, lr in zip(self.group_names, lrs)})
        norm = self.engine.get_global_grad_norm()
        if norm is not None:
            row["grad_norm"] = float(norm)
        if self.wf.train.precision == "fp16":
            row["loss_scale"] = float(getattr(self.engine.optimizer, "loss_scale", float("nan")))
            row["skipped_steps"] = int(self.engine.skipped_steps)
        assert self.writer is not None
        self.writer.write(row)

    def _export(self) -> None:
        """Rank 0 merges the ZeRO-2 partitions of the final checkpoint and writes the student."""
        if self.rank == 0:
            dtype = self.export_dtype
            t0 = time.perf_counter()
            export_student(self.ckpt_dir, ckpt.tag_for(self.step), Path(self.run.init), self.final_dir, dtype,
                           Path(self.wf.data.tokenizer))
            publish(self.final_dir, Path(self.run.out))
            adapters = self.engine.module.criterion.adapters
            if len(list(adapters.parameters())):  # for the next stage (_carry_adapters); never exported
                tmp = self.stage_dir / f".{ADAPTERS_FILE}.tmp"
                torch.save({k: v.detach().float().cpu() for k, v in adapters.state_dict().items()}, tmp)
                os.replace(tmp, self.stage_dir / ADAPTERS_FILE)
            self._log(f"{self.run.stage}: exported {self.final_dir} ({dtype}, {time.perf_counter() - t0:.1f} s)")
        dist.barrier()

    # ----------------------------------------------------------------------------- cleanup
    def cleanup(self, keep_process_group: bool = False) -> None:
        """Close the metrics, release the engine (its gradient hooks hold the model and optimiser
        states: a next stage in the same launch would otherwise hold two students and two ZeRO
        partitions at once) and destroy the process group unless the launch runs another stage."""
        if self.writer is not None:
            self.writer.close()
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.destroy()
            self.engine = self.module = self.loader = None
        if not keep_process_group and dist.is_available() and dist.is_initialized():
            deepspeed.comm.destroy_process_group()  # also drops DeepSpeed's cached groups (a later run re-inits)

    def _log(self, msg: str) -> None:
        if getattr(self, "rank", 0) == 0:
            print(f"[student-train] {msg}", flush=True)
