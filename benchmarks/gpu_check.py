"""The training-cost table on CUDA at real widths, plus a DeepSpeed ZeRO-2 step (< 5 min on one H200).

    .venv/bin/python -m benchmarks.gpu_check --out results/bench_gpu      → gpu_bench.{json,md}

Student 3 × 2048 (16 heads, ffn 5632), teacher 4 × 4096 (32 heads, ffn 11008): the released widths
with a few layers (layer ratio 4:3 like 32:24), vocab 32000, the released CLIP-L/14-336 tower
architecture, 144 vision tokens, B=4, L_emb ≈ 600, |T| ≈ 420, |R| ≈ 120; random weights (only
shapes matter for cost). For fp16 and bf16 (autocast, fp32 master weights; GradScaler for fp16):
sft / cached / online steps exactly as `benchmarks.train_cost` measures them on CPU, then the
recipe's DeepSpeed ZeRO-2 engine (workflows/zero2.json filled by student_train.engine, the
recipe's TrainModule and AdamW groups) on cached batches, and one reader worker at the real
shapes against what the student consumes. The store has the dump's default cache (cache v2: the
teacher's projector tokens and first-layer attention recomputed by the trained module from the
student's tower features and the teacher weights the store keeps), so the cached step includes
rebuilding them. Without CUDA it says so and exits 0 without measuring.
`--device cpu --tiny` runs the same code on tiny shapes (a test of the script, not a benchmark).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import Clock, Flags, clean, env_info, fmt, mb, summary

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
REPO = Path(__file__).resolve().parents[1]


def _settings(tiny: bool):
    from benchmarks.synth import Arch, Setting

    if tiny:
        return Setting("tiny", Arch(1, 64, 2, 128), Arch(2, 128, 4, 256), vocab=256, grid=4, batch=1, prefix=4,
                       n_text=12, n_resp=4, note="--tiny: script test, numbers meaningless")
    return Setting("real-width", Arch(3, 2048, 16, 5632), Arch(4, 4096, 32, 11008), vocab=32000, grid=12, batch=4,
                   prefix=35, n_text=420, n_resp=120, real_vision=True,
                   note="released widths, 3 student / 4 teacher layers, CLIP-L/14-336 tower, random weights")


def _init_dist() -> None:
    import deepspeed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    with socket.socket() as sock:  # a free port for the single-rank process group
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0",
                 "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(k, v)
    deepspeed.init_distributed(dist_backend=deepspeed.get_accelerator().communication_backend_name())


def deepspeed_steps(p, s, device: str, precision: str, steps: int, warmup: int) -> dict:
    """The recipe's engine (ZeRO-2, its AdamW groups and schedule) on the cached batches."""
    import copy

    import deepspeed

    from benchmarks.synth import attach_cached
    from benchmarks.train_cost import train_module
    from pipeline.workflow import LossConfig, StageConfig
    from student_train.engine import BatchPlan, build_optimizer, build_scheduler, fill_ds_config
    from student_train.losses import resolve_loss

    _init_dist()
    cuda = torch.device(device).type == "cuda"
    base = torch.cuda.memory_allocated() if cuda else 0  # the shared student init etc. are not this run's
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    module = train_module(copy.deepcopy(p.base).to(device), "alignkd", p.t_cfg.num_attention_heads, p.t_cfg.hidden_size,
                          device, reader=p.reader)  # the default recompute store: the step rebuilds the tokens
    cfg = fill_ds_config(REPO / "workflows" / "zero2.json", BatchPlan(s.batch, s.batch, 1, 1), precision)
    opt = build_optimizer(module, StageConfig(lr=1e-4, projector_lr=1e-4))
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=opt, lr_scheduler=build_scheduler(opt, 1000, 0.0),
                                           config=cfg)
    dtype = engine.module.student.dtype
    batches = attach_cached(p.batches, p.reader, resolve_loss(LossConfig(preset="alignkd")).teacher_targets())
    clock, times = Clock(device), []
    for i in range(warmup + steps):
        t = clock.now()
        b = batches[i % len(batches)].to(device, dtype=dtype)  # as the recipe's _loss_step
        loss, _ = engine(b)
        engine.backward(loss)
        engine.step()
        if i >= warmup:
            times.append(clock.now() - t)
    st = summary(times)
    peak = torch.cuda.max_memory_allocated() - base if cuda else None  # engine, fp32 master + states, activations
    out = {"precision": precision, "step_s": st, "samples_per_s": s.batch / st["median"], "peak_bytes": peak,
           "zero_stage": cfg["zero_optimization"]["stage"], "skipped_steps": int(getattr(engine, "skipped_steps", 0))}
    del engine, module, opt
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="results/bench_gpu")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (to test this script on CPU)")
    ap.add_argument("--dtypes", nargs="+", default=["fp16", "bf16"], choices=tuple(DTYPES))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-deepspeed", action="store_true")
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: CUDA is not available here (torch {torch.__version__}, built with CUDA "
              f"{torch.version.cuda or 'none'}); nothing was measured. Run it on a GPU machine: "
              "python -m benchmarks.gpu_check --out results/bench_gpu", file=sys.stderr)
        return 0
    from benchmarks import report
    from benchmarks.data_path import real_shape_rate
    from benchmarks.train_cost import build_modes, explain, measure_modes, mode_ratios, prepare

    t0, flags, s = time.perf_counter(), Flags(), _settings(a.tiny)
    rep: dict = {"meta": {"command": "python -m benchmarks.gpu_check " + " ".join(argv if argv is not None else sys.argv[1:]),
                          "env": env_info(a.device)}, "settings": {}, "deepspeed": {}, "notes": []}
    for name in a.dtypes:
        amp = DTYPES[name]
        if a.device == "cpu" and amp == torch.float16:
            continue  # CPU autocast is meant for bf16; fp16 here is a GPU path
        print(f"[gpu_check] {s.name} {name}", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            p = prepare(s, a.device, amp, Path(tmp))
            prov = p.reader.provenance  # the dump's defaults: projector tokens recomputed, u8sqrt attention
            rep["cache"] = {"projector_tokens": prov.projector_tokens, "attention": prov.attention, "attn": prov.encoding.attn,
                            "vision": prov.encoding.vision, "logprobs": prov.encoding.logprobs}
            runs = build_modes(p, a.device, amp)
            modes = measure_modes(runs, s.batch, a.device, amp, a.steps, a.warmup)
            del runs
            res = {"shapes": s.shapes(), "note": s.note, "device": a.device, "amp": name, "steps": a.steps,
                   "warmup": a.warmup, "modes": modes, "ratios": mode_ratios(modes)}
            rep["settings"][f"{s.name} {name}"] = res
            rep["notes"] += explain(f"{s.name} {name}", res, flags, "gpu")
            if not a.no_deepspeed:
                prec = name if a.device == "cuda" else "fp32"  # DeepSpeed's half precision needs an accelerator
                print(f"[gpu_check] DeepSpeed ZeRO-2 {prec}", file=sys.stderr, flush=True)
                rep["deepspeed"][name] = deepspeed_steps(p, s, a.device, prec, a.steps, a.warmup)
            del p
        if a.device == "cuda":
            torch.cuda.empty_cache()
    cached = [r["modes"]["cached"]["samples_per_s"] for r in rep["settings"].values()]
    rd = real_shape_rate(2 if a.tiny else 8, 0.5 if a.tiny else 2.0)
    rep["reader"] = {**rd, "student_cached_samples_per_s": max(cached) if cached else None,
                     "workers_needed": (max(cached) / rd["samples_per_s"]) if cached else None}
    rep["flags"], rep["meta"]["wall_s"] = flags.items, time.perf_counter() - t0
    rep = clean(rep)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_bench.json").write_text(json.dumps(rep, indent=1, allow_nan=False) + "\n")
    (out / "gpu_bench.md").write_text(_markdown(rep, report))
    print(f"[gpu_check] wrote {out / 'gpu_bench.md'} ({rep['meta']['wall_s']:.0f} s)", file=sys.stderr)
    return 0


def _markdown(rep: dict, report) -> str:
    env = rep["meta"]["env"]
    out = [f"# alignkd GPU check — {env.get('gpu', env['device'])}", "",
           f"`{rep['meta']['command']}`; torch {env['torch']}, CUDA {env.get('cuda')}, deepspeed {env.get('deepspeed')}; "
           f"{rep['meta']['wall_s']:.0f} s.", ""]
    c = rep.get("cache", {})
    out += [f"Cached mode reads the default store: projector tokens {c.get('projector_tokens')}, first-layer attention "
            f"{c.get('attention')} (both rebuilt in the step from the student's tower features and the teacher weights the "
            f"store keeps once), log-probs {c.get('logprobs')}.", ""]
    out += report.train_table({"settings": rep["settings"], "notes": rep["notes"]}, "Training cost per step (autocast, fp32 master weights)")
    if rep["deepspeed"]:
        out += ["### DeepSpeed ZeRO-2 (recipe engine, cached mode, Align-KD loss)", "",
                "| precision | step ms (p25–p75) | samples/s | peak MB | skipped steps |", "|---|---|---|---|---|"]
        for d in rep["deepspeed"].values():
            st = d["step_s"]
            out.append(f"| {d['precision']} | {1e3 * st['median']:.1f} ({1e3 * st['p25']:.1f}–{1e3 * st['p75']:.1f}) | "
                       f"{d['samples_per_s']:.2f} | {mb(d['peak_bytes'])} | {d['skipped_steps']} |")
        out.append("")
    r = rep["reader"]
    out += ["### Reader at real shapes vs the student", "",
            f"One reader process: {r['samples_per_s']:.1f} samples/s ({r['decoded_MB_per_sample']:.2f} MB decoded per "
            f"sample); the student consumes {fmt(r['student_cached_samples_per_s'], '.1f')} samples/s in cached "
            f"mode ⇒ **{fmt(r['workers_needed'], '.2f')} DataLoader workers** per GPU just for the cache reads "
            "(image decoding comes on top).", ""]
    out += ["## Flagged", ""] + ([f"- **{f['what']} = {fmt(f['value'], '.3g')}** (want {f['limit']}): {f['why']}."
                                  for f in rep["flags"]] or ["None."])
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
