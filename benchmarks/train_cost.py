"""Training cost of one student step in the three modes, same student init, same batches:

    sft     supervised loss only (no teacher)                                   preset "sft"
    cached  Align-KD loss, targets read from a real zarr store (cache_schema)   preset "alignkd"
    online  Align-KD loss, the teacher in memory: forward_align + reductions    preset "alignkd"
            every step (student_train.online.OnlineTeacher)

One step = batch to device (+ the online teacher's targets) → student `forward_align` (the
recipe's TrainModule: capture only what the loss reads) → `AlignKDLoss` → backward → AdamW step
(the recipe's parameter groups). Plain torch, not DeepSpeed: this isolates what the loss and its
targets cost. Steps of the three modes are interleaved (sft, cached, online, sft, ...) so a load
spike from a neighbour hits all three alike; each mode's time is the median after warm-up.
Memory = persistent (distinct storages of the student, adapters, AdamW state, the online teacher
and the batch with its targets) + the transient peak of one step (`common.transient_peak`).
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.common import Clock, Flags, fmt, ratio, summary, tensor_bytes, transient_peak
from benchmarks.synth import Arch, Setting, attach_cached, configs, make_batches, write_store
from pipeline.models import CaptureSpec, MobileVLM
from pipeline.workflow import LossConfig, StageConfig, Workflow, with_overrides
from student_train.adapters import Adapters
from student_train.data.batch import StudentBatch
from student_train.engine import build_optimizer, vision_tower_of
from student_train.losses import AlignKDLoss, resolve_loss
from student_train.online import OnlineTeacher
from student_train.recipe import TrainModule

MODES = ("sft", "cached", "online")
PHASES = ("targets", "forward", "loss", "backward", "optimizer")
TOPK, FOCUS_K = 64, 16


def settings(quick: bool) -> list[Setting]:
    """The toy presets, and a real-like teacher/student ratio at small size (see `note`)."""
    if quick:
        return [
            Setting("toy", Arch(2, 128, 4, 344), Arch(4, 256, 8, 688), vocab=512, grid=8, batch=2, prefix=12,
                    n_text=24, n_resp=8, note="toy presets (quick: short sequences)"),
            Setting("ratio", Arch(2, 128, 2, 352), Arch(3, 256, 4, 688), vocab=2000, grid=12, batch=1, prefix=8,
                    n_text=40, n_resp=12, note="quick: tiny stand-in for the ratio setting"),
        ]
    return [
        Setting("toy", Arch(2, 128, 4, 344), Arch(4, 256, 8, 688), vocab=512, grid=8, batch=8, prefix=40,
                n_text=40, n_resp=12, note="toy presets (toy_world.presets), toy-world sequence lengths"),
        Setting("ratio", Arch(3, 256, 4, 704), Arch(4, 512, 8, 1376), vocab=4000, grid=12, batch=2, prefix=35,
                n_text=200, n_resp=60,
                note="real ratios at small size: teacher 2× hidden, 2× heads (same head dim), 4/3 the layers "
                     "(32/24), ffn 2.75× hidden, 144 vision tokens, |T|=200, |R|=60 like cache_schema.sizes; "
                     "vocab 4000 keeps vocab/hidden ≈ 32000/2048 so the lm_head's share of the FLOPs is real-like"),
    ]


@dataclass
class ModeRun:
    name: str
    module: TrainModule
    opt: torch.optim.Optimizer
    batches: list[StudentBatch]
    online: OnlineTeacher | None = None
    scaler: object | None = None

    def step(self, batch: StudentBatch, clock: Clock, amp: torch.dtype | None) -> dict[str, float]:
        """One training step; returns seconds per phase."""
        dev = self.module.student.device
        t0 = clock.now()
        b = batch.to(dev)
        if self.online is not None:
            b.teacher = self.online.targets(b)
        t1 = clock.now()
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            al = self.module.student_forward(b)  # = TrainModule.forward, split in two
            t2 = clock.now()
            loss, _ = self.module.criterion(al, self.module.teacher_batch(b))
        t3 = clock.now()
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        t4 = clock.now()
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        t5 = clock.now()
        return dict(zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)))


def train_module(student: MobileVLM, preset: str, t_heads: int, t_hidden: int, device, reader=None) -> TrainModule:
    """The recipe's trained module (TrainModule) for `preset`, capture spec as `_setup_model` builds it;
    with the teacher projector of `reader`'s store when it is a recompute store and the loss reads
    projector tokens (the default cache: the step then pays for rebuilding them)."""
    resolved = resolve_loss(LossConfig(preset=preset))
    cfg = student.config
    adapters = Adapters.for_loss(resolved, cfg.num_attention_heads, t_heads, cfg.hidden_size, t_hidden)
    keys = resolved.attn_keys
    spec = CaptureSpec(layers=tuple(dict.fromkeys(l for l, _ in keys)), blocks=tuple(dict.fromkeys(b for _, b in keys)))
    tokens = attention = None
    if reader is not None and reader.provenance.projector_tokens == "recompute":
        from student_train.teacher_projector import build_teacher_recompute

        tokens, attention = build_teacher_recompute(reader, resolved, "recompute", device)
    module = TrainModule(student, AlignKDLoss(resolved, adapters), spec, tokens, attention).to(device)
    module.train()
    return module


@dataclass
class Prepared:
    """What every mode shares: the student init, the teacher checkpoint, the batches, the store."""

    base: MobileVLM
    t_cfg: object
    t_dir: Path
    batches: list[StudentBatch]
    reader: object  # CacheReader over the teacher's targets for `batches`
    n_vision: int


def prepare(s: Setting, device: str, amp: torch.dtype | None, work: Path, seed: int = 0) -> Prepared:
    """Seeded student and teacher (built on `device`: a 7B-width teacher is slow to init on CPU),
    the teacher saved once (store and online read the same weights), batches, the cache store."""
    from toy_world.presets import write_vision_tower

    s_cfg, t_cfg = configs(s, write_vision_tower(work / "clip_toy"))
    with torch.device(device):
        torch.manual_seed(seed)
        base = MobileVLM(s_cfg)
        torch.manual_seed(seed + 1)
        t_model = MobileVLM(t_cfg)
        t_model.vision_tower.load_state_dict(base.vision_tower.state_dict())  # one shared frozen tower, as released
        t_dir = t_model.save_pretrained(work / "teacher", dtype=amp)
        del t_model
    vision_tower_of(base).requires_grad_(False)
    batches = make_batches(s, base.image_size, seed)
    teacher = MobileVLM.from_pretrained(t_dir, dtype=amp or torch.float32, device=device)
    reader = write_store(teacher, batches, work / "cache.zarr", TOPK, FOCUS_K)
    del teacher
    return Prepared(base, t_cfg, t_dir, batches, reader, s.n_vision)


def build_modes(p: Prepared, device: str, amp: torch.dtype | None) -> list[ModeRun]:
    needs = resolve_loss(LossConfig(preset="alignkd")).teacher_targets()
    wf = with_overrides(Workflow(source="benchmarks.train_cost"),
                        {"models.teacher": str(p.t_dir), "models.num_vision_tokens": p.n_vision, "cache.focus_k": FOCUS_K})
    fp16_cuda = amp == torch.float16 and torch.device(device).type == "cuda"
    runs = []
    for name in MODES:
        module = train_module(copy.deepcopy(p.base).to(device), "sft" if name == "sft" else "alignkd",
                              p.t_cfg.num_attention_heads, p.t_cfg.hidden_size, device,
                              reader=p.reader if name == "cached" else None)
        opt = build_optimizer(module, StageConfig(lr=1e-4, projector_lr=1e-4))
        bs = attach_cached(p.batches, p.reader, needs) if name == "cached" else p.batches
        online = OnlineTeacher(wf, device, amp or torch.float32, needs=needs) if name == "online" else None
        runs.append(ModeRun(name, module, opt, bs, online, torch.amp.GradScaler("cuda") if fp16_cuda else None))
    return runs


def run_setting(s: Setting, device: str = "cpu", amp: torch.dtype | None = None, steps: int = 6, warmup: int = 2,
                work: Path | None = None, prepared: Prepared | None = None) -> dict:
    """The modes of one setting: interleaved timing, then one memory-profiled step per mode."""
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        runs = build_modes(prepared or prepare(s, device, amp, Path(tmp)), device, amp)
        modes = measure_modes(runs, s.batch, device, amp, steps, warmup)
        del runs
    return {"shapes": s.shapes(), "note": s.note, "device": device, "amp": str(amp).replace("torch.", "") if amp else "fp32",
            "steps": steps, "warmup": warmup, "modes": modes, "ratios": mode_ratios(modes)}


def measure_modes(runs: list[ModeRun], batch: int, device: str, amp: torch.dtype | None, steps: int, warmup: int) -> dict:
    clock = Clock(device)
    times: dict[str, list[dict]] = {r.name: [] for r in runs}
    for i in range(warmup + steps):
        for r in runs:  # interleaved: a neighbour's load spike hits every mode alike
            ph = r.step(r.batches[i % len(r.batches)], clock, amp)
            if i >= warmup:
                times[r.name].append(ph)
    modes = {}
    for r in runs:
        b = r.batches[0]
        persistent = tensor_bytes(r.module, r.opt, r.online.model if r.online else None, b)
        transient, method = transient_peak(lambda: r.step(b, clock, amp), device)
        tot = summary([sum(ph.values()) for ph in times[r.name]])
        modes[r.name] = {
            "step_s": tot, "samples_per_s": batch / tot["median"],
            "phases_s": {p: summary([ph[p] for ph in times[r.name]])["median"] for p in PHASES},
            "memory": {"persistent_bytes": persistent, "transient_bytes": transient,
                       "peak_bytes": None if transient is None else persistent + transient, "method": method},
            "trainable_params": sum(p.numel() for p in r.module.parameters() if p.requires_grad),
            "adapter_params": sum(p.numel() for p in r.module.criterion.adapters.parameters()),
        }
    return modes


def mode_ratios(modes: dict) -> dict:
    t = {m: modes[m]["step_s"]["median"] for m in modes}
    mem = {m: modes[m]["memory"]["peak_bytes"] for m in modes}
    return {"time_cached_over_sft": ratio(t["cached"], t["sft"]), "time_online_over_cached": ratio(t["online"], t["cached"]),
            "time_online_over_sft": ratio(t["online"], t["sft"]), "mem_cached_over_sft": ratio(mem["cached"], mem["sft"]),
            "mem_online_over_cached": ratio(mem["online"], mem["cached"])}


def explain(name: str, res: dict, flags: Flags, section: str = "train_cost") -> list[str]:
    """Notes on a setting's ratios; a cached/sft above 1.1 is flagged with where the time went."""
    m, r = res["modes"], res["ratios"]
    ph = {k: m[k]["phases_s"] for k in m}
    d = {p: 1e3 * (ph["cached"][p] - ph["sft"][p]) for p in PHASES}
    sft_ms = 1e3 * m["sft"]["step_s"]["median"]
    notes = []
    if r["time_cached_over_sft"] is not None and r["time_cached_over_sft"] > 1.1:
        sh = res["shapes"]
        why = (f"cached − sft per step: forward {d['forward']:+.1f} ms (first-layer T→V attention capture: softmax(QKᵀ) "
               f"in fp32 for the |T|≈{sh['n_text']} query rows over all L≈{sh['l_emb_mean']} keys), loss {d['loss']:+.1f} ms "
               f"(RKL over the vocabulary at |R| positions, attention MSE via the 1×1 head conv, token adapter "
               f"{sh['student']['hidden']}→{sh['teacher']['hidden']} on {sh['n_vision']} tokens), backward "
               f"{d['backward']:+.1f} ms, optimizer {d['optimizer']:+.1f} ms ({m['cached']['adapter_params']:,} adapter "
               f"params), batch/targets {d['targets']:+.1f} ms; against an sft step of only {sft_ms:.1f} ms")
        if sh["student"]["layers"] * sh["student"]["hidden"] < 24 * 2048 / 8:
            why += (": the student is tiny, so these per-step costs, which scale with one layer and the vocabulary "
                    "rather than with depth × width², weigh far more than at 24 × 2048")
        spread = max(1e3 * (m[k]["step_s"]["p75"] - m[k]["step_s"]["p25"]) for k in ("sft", "cached"))
        if 1e3 * (m["cached"]["step_s"]["median"] - m["sft"]["step_s"]["median"]) < spread:
            why += (f". The excess is within the run-to-run spread of the step times (interquartile {spread:.1f} ms), "
                    "so on this shared machine part of it may be noise")
        flags.add(section, f"{name}: cached/sft step time", r["time_cached_over_sft"], "≤ 1.1", why)
        notes.append(f"**{name}: cached/sft = {r['time_cached_over_sft']:.3f} (> 1.1).** {why}.")
    elif r["time_cached_over_sft"] is not None:
        extra = 1e3 * (m["cached"]["step_s"]["median"] - m["sft"]["step_s"]["median"])
        notes.append(f"{name}: cached/sft = {r['time_cached_over_sft']:.2f}: the Align-KD terms and their targets add "
                     f"{extra:+.1f} ms to a {sft_ms:.1f} ms step (forward {d['forward']:+.1f}, loss {d['loss']:+.1f}, "
                     f"backward {d['backward']:+.1f}, optimizer {d['optimizer']:+.1f} ms).")
    if r["time_online_over_cached"] is not None:
        tgt = 1e3 * ph["online"]["targets"]
        notes.append(f"{name}: online/cached = {r['time_online_over_cached']:.2f}; the online teacher's forward_align + "
                     f"reductions take {tgt:.1f} ms of each online step (cached: {1e3 * ph['cached']['targets']:.1f} ms "
                     "to move the read targets to the device).")
        mo, mc = m["online"]["memory"], m["cached"]["memory"]
        notes.append(f"{name}: online holds the teacher: {(mo['persistent_bytes'] - mc['persistent_bytes']) / 2**20:+.1f} MB "
                     f"persistent vs cached (memory online/cached {fmt(r['mem_online_over_cached'], '.2f')}); the cached targets "
                     f"of one batch weigh {(mc['persistent_bytes'] - m['sft']['memory']['persistent_bytes']) / 2**20:.1f} MB "
                     "with the adapters and their AdamW state.")
        if r["time_online_over_cached"] < 1.0:
            flags.add(section, f"{name}: online/cached step time", r["time_online_over_cached"], "> 1",
                      "the online mode should cost the teacher's forward on top of the cached step; below 1 means "
                      "noise dominated this measurement (rerun on a quieter machine)")
    return notes


def run(quick: bool, flags: Flags, work: Path | None = None, log=print) -> dict:
    out = {"settings": {}, "notes": []}
    steps, warmup = (2, 1) if quick else (6, 2)
    for s in settings(quick):
        log(f"[train_cost] {s.name}: {s.student.text()} student, {s.teacher.text()} teacher, B={s.batch}, L≈{s.l_emb}")
        res = run_setting(s, "cpu", None, steps=steps + (2 if s.name == "toy" and not quick else 0), warmup=warmup,
                          work=work)
        out["settings"][s.name] = res
        out["notes"] += explain(s.name, res, flags)
    return out
