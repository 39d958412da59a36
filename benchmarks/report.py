"""bench.json → bench.md: one table per section, notes under it, and every flagged number first."""

from __future__ import annotations

from benchmarks.common import fmt, mb


def _ms(x: float | None) -> str:
    return "–" if x is None else f"{1e3 * x:,.1f}"


def train_table(res: dict, title: str) -> list[str]:
    out = [f"### {title}", ""]
    for name, s in res["settings"].items():
        sh, m, r = s["shapes"], s["modes"], s["ratios"]
        out += [f"**{name}** — student {sh['student']['layers']}×{sh['student']['hidden']} ({sh['student']['heads']} heads), "
                f"teacher {sh['teacher']['layers']}×{sh['teacher']['hidden']} ({sh['teacher']['heads']} heads), vocab "
                f"{sh['vocab']}, |V|={sh['n_vision']}, B={sh['batch']}, L_emb≈{sh['l_emb_mean']}, |T|≈{sh['n_text']}, "
                f"|R|≈{sh['n_resp']}; {s['device']} {s['amp']}, median of {s['steps']} steps after {s['warmup']} warm-up. "
                f"{s['note']}", "",
                "| mode | step ms (p25–p75) | samples/s | targets | forward | loss | backward | optim | peak MB "
                "(persistent + transient) |", "|---|---|---|---|---|---|---|---|---|"]
        for mode, x in m.items():
            st, ph, mem = x["step_s"], x["phases_s"], x["memory"]
            out.append(f"| {mode} | {_ms(st['median'])} ({_ms(st['p25'])}–{_ms(st['p75'])}) | {fmt(x['samples_per_s'], '.2f')} | "
                       + " | ".join(_ms(ph[p]) for p in ("targets", "forward", "loss", "backward", "optimizer"))
                       + f" | {mb(mem['peak_bytes'])} ({mb(mem['persistent_bytes'])} + {mb(mem['transient_bytes'])}) |")
        out += ["", f"Ratios: time cached/sft **{fmt(r['time_cached_over_sft'], '.2f')}**, online/cached "
                f"**{fmt(r['time_online_over_cached'], '.2f')}**, online/sft {fmt(r['time_online_over_sft'], '.2f')}; "
                f"memory cached/sft {fmt(r['mem_cached_over_sft'], '.2f')}, online/cached {fmt(r['mem_online_over_cached'], '.2f')}.", ""]
    out += [f"- {n}" for n in res.get("notes", [])]
    return out + [""]


def data_table(d: dict) -> list[str]:
    rs, ld, st, fed, real = d["reader"], d["loader"], d["student"], d["fed"], d["real_shapes_reader"]
    return ["## 2. Data path (cached mode)", "",
            f"Toy store: {d['samples_in_store']} samples; loss preset `{d['loss_preset']}`; loader = "
            f"`student_train.data.build_train_loader` with {ld['num_workers']} DataLoader worker(s), prefetch "
            f"{ld['prefetch_factor']}, micro-batch {ld['micro_batch']}.", "",
            "| stage | samples/s | note |", "|---|---|---|",
            f"| CacheReader.iter_samples + image_tokens + from_cached (1 process) | {fmt(rs['samples_per_s'], '.1f')} | store alone |",
            f"| loader (manifest ⋈ cache, image decode, collate) | {fmt(ld['samples_per_s'], '.1f')} | first batch after "
            f"{fmt(ld['first_batch_s'], '.2f')} s (worker start) |",
            f"| toy student consumes (cached, Align-KD) | {fmt(st['samples_per_s'], '.1f')} | median step {_ms(st['step_s']['median'])} ms |",
            f"| reader at real teacher shapes, 1 worker | {fmt(real['samples_per_s'], '.1f')} | "
            f"{fmt(real['decoded_MB_per_sample'], '.2f')} MB decoded per sample |", "",
            f"Ratios: loader / student **{fmt(d['ratios']['loader_over_student'], '.2f')}**, reader / student "
            f"{fmt(d['ratios']['reader_over_student'], '.2f')}. Training fed by the loader waited for data "
            f"**{fmt(100 * fed['stall_fraction'] if fed['stall_fraction'] is not None else None, '.1f')}%** of its time "
            f"({fed['steps']} steps).", ""] + [f"- {n}" for n in d.get("notes", [])] + [""]


def dump_table(d: dict) -> list[str]:
    sps, r = d["teacher_samples_per_s"], d["ratios"]
    out = ["## 3. Dump cost", "", f"{d['samples']} samples (the toy world's short subset), {d['units']} units, batch "
           f"{d['batch_size']}, {d['dtype']}, {d['threads_per_worker']} thread per worker, {d['cpus']} CPUs; load "
           f"average {d['loadavg_before']} → {d['loadavg_after']}.", "",
           "| run | wall s (same samples) | samples/s | vs forward |", "|---|---|---|---|"]
    for k, v in sps.items():
        out.append(f"| teacher {k} (in-process) | {fmt(d['samples'] / v, '.2f')} | {fmt(v, '.1f')} | "
                   f"{fmt(sps['forward'] / v, '.2f')} |")
    for k, v in d["dump"].items():
        extra = f" (+ start {fmt(v['startup_s'], '.1f')} s)"
        out.append(f"| dump {k} | {fmt(v['loop_s'], '.2f')}{extra} | {fmt(v['samples_per_s'], '.1f')} | "
                   f"{fmt(r.get(f'{k} / forward'), '.2f')} |")
    ip = d["dump"].get("in-process", {})
    if "write_only_s" in ip:
        out.append(f"| cache writer alone (same samples re-written: encode, zstd, CRC, fsync, commit) | "
                   f"{fmt(ip['write_only_s'], '.2f')} | {fmt(d['samples'] / ip['write_only_s'], '.1f')} | – |")
        out.append(f"| forward+reduce inside the in-process worker (its compute_s) | {fmt(ip['compute_s'], '.2f')} | "
                   f"{fmt(d['samples'] / ip['compute_s'], '.1f')} | {fmt(ip['compute_s'] * sps['forward'] / d['samples'], '.2f')} |")
    if "skipped" in d.get("ray", {}):
        out.append(f"| dump ray 1 / ray 2 | skipped | – | {d['ray']['skipped']} |")
    if "speedup ray 2 vs 1" in r:
        out += ["", f"Speed-up 2 vs 1 Ray workers: **{fmt(r['speedup ray 2 vs 1'], '.2f')}×**."]
    return out + [""] + [f"- {n}" for n in d.get("notes", [])] + [""]


def storage_table(s: dict) -> list[str]:
    real, toy = s["real_shapes"], s["toy_store"]
    sh, naive, per = real["shapes"], real["naive_bytes_per_sample"], real["bytes_per_sample"]
    tag = "" if s["real_shapes_are_real"] else " (**--quick: reduced shapes, not the real teacher's**)"
    out = ["## 4. Storage", "", f"Real teacher shapes{tag}: H={sh['heads']}, |V|={sh['n_vision']}, D={sh['hidden']}, "
           f"vocab={sh['vocab']}, |T|={sh['n_text']}, |R|={sh['n_resp']}, top-k={sh['topk']} "
           "(`cache_schema.sizes.measure`: synthetic targets through the real writer/reader).", "",
           "| target | naive MB/sample | default MB/sample | vs naive | lossless MB/sample | default error |", "|---|---|---|---|---|---|"]
    for tgt in ("attention", "logits", "vision"):
        d, l = real["targets"][tgt][real["defaults"][tgt]], real["targets"][tgt][real["lossless"][tgt]]
        b = lambda r: r.get("bytes_per_sample", r.get("bytes_per_image"))
        err = ", ".join(f"{k} {v:.2g}" for k, v in d["errors"].items())
        out.append(f"| {tgt} ({real['defaults'][tgt]}) | {naive[tgt] / 1e6:.3f} | {b(d) / 1e6:.4f} | {d['ratio_vs_naive']:.1f}× | "
                   f"{b(l) / 1e6:.4f} | {err} |")
    out += [f"| **total** | {per['naive'] / 1e6:.3f} | {per['default'] / 1e6:.3f} | {per['naive'] / per['default']:.1f}× | "
            f"{per['lossless'] / 1e6:.3f} | |", "", "| subset | samples | naive TB | lossless TB | default TB |", "|---|---|---|---|---|"]
    for name, p in real["projection"].items():
        out.append(f"| {name} | {p['samples']:,} | {p['naive_TB']:.2f} | {p['lossless_TB']:.2f} | {p['default_TB']:.2f} |")
    out += ["", "Projection assumes one unique image per sample (an upper bound) and the shapes above on average.", "",
            f"Toy store written by the dump ({toy['samples']} samples, {toy['images']} images; H={toy['shapes']['heads']}, "
            f"|V|={toy['shapes']['n_vision']}, D={toy['shapes']['hidden']}, vocab={toy['shapes']['vocab']}, mean |T| "
            f"{toy['shapes']['mean_n_text']:.0f}, |R| {toy['shapes']['mean_n_resp']:.0f}):", "",
            "| target | naive KB/sample | stored KB/sample | vs naive |", "|---|---|---|---|"]
    for tgt, r in list(toy["targets"].items()) + [("total", toy["total"])]:
        vs = "recomputed by the student" if r.get("recomputed") else f"{fmt(r['ratio_vs_naive'], '.1f')}×"
        out.append(f"| {tgt} | {r['naive_bytes_per_sample'] / 1e3:.2f} | {r['bytes_per_sample'] / 1e3:.2f} | {vs} |")
    return out + [""] + [f"- {n}" for n in s.get("notes", [])] + [""]


def fidelity_table(f: dict) -> list[str]:
    rk, at = f["rkl"], f["attention"]
    out = ["## 5. Fidelity of the lossy choices", "",
           f"Reverse-KL gradient angle (sparse cache vs dense teacher) w.r.t. the student logits: vocab {rk['vocab']}, "
           f"{rk['positions']} positions, teacher entropy {rk['teacher_entropy_nats']:.2f} nats (Zipf {rk['zipf']:.2f}), "
           f"student = teacher + N(0, {rk['noise']}²). DESIGN.md §4 values in brackets.", "",
           "| k | teacher mass in top-k | bucket ° | bucket, f16 log-probs ° | uniform tail ° | none (top-k only) ° |",
           "|---|---|---|---|---|---|"]
    for r in rk["rows"]:
        d = r.get("design", {})
        br = lambda key: f" [{d[key]}]" if key in d else ""
        out.append(f"| {r['k']} | {r['teacher_mass_topk']:.3f}{br('teacher_mass_topk')} | {r['angle_bucket_deg']:.2f}"
                   f"{br('angle_bucket_deg')} | {r['angle_bucket_f16_deg']:.2f} | {r['angle_uniform_deg']:.1f}"
                   f"{br('angle_uniform_deg')} | {r['angle_none_deg']:.1f} |")
    sens = rk.get("bucket_angle_by_noise", {})
    if sens:
        out += ["", "Bucket angle ° for other student noise levels (same teacher): the error grows with the student's "
                "distance from the teacher, so compare with DESIGN.md at a matching noise.", "",
                "| noise σ | " + " | ".join(f"k={k}" for k in next(iter(sens.values()))) + " |",
                "|---|" + "---|" * len(next(iter(sens.values())))]
        for nz, row in sens.items():
            out.append(f"| {nz} | " + " | ".join(f"{v:.2f}" for v in row.values()) + " |")
    sh = at["shapes"]
    out += ["", f"Stored first-layer attention ({sh['teacher_heads']} teacher heads × |T|={sh['n_text']} × |V|={sh['n_vision']}; "
            f"student {sh['student_heads']} heads through the 1×1 head adapter): relative error of L_attn and of "
            "∂L_attn/∂A_student, decoded vs exact teacher.", "",
            "| encoding | max abs err | zeroed | loss rel err (random / fitted adapter) | grad rel err (random / fitted) | "
            "grad angle ° (fitted) |", "|---|---|---|---|---|---|"]
    for mode, r in at["encodings"].items():
        out.append(f"| {mode} | {r['max_abs_err']:.2g} | {100 * r['zeroed_frac']:.2f}% | {r['random']['loss_rel_err']:.2g} / "
                   f"{r['fitted']['loss_rel_err']:.2g} | {r['random']['grad_rel_err']:.2g} / {r['fitted']['grad_rel_err']:.2g} | "
                   f"{r['fitted']['grad_angle_deg']:.3f} |")
    return out + [""] + [f"- {n}" for n in f.get("notes", [])] + [""]


def to_markdown(rep: dict) -> str:
    meta = rep["meta"]
    mode = ("**quick mode: tiny sizes, few steps — a structure check, the numbers are not meaningful**"
            if meta["quick"] else "full run")
    out = ["# alignkd benchmarks", "",
           f"`{meta['command']}` — {meta['started']}, {meta['wall_s']:.0f} s; {mode}.", "",
           f"Machine: {meta['env']['cpu_count']} CPUs, torch {meta['env']['torch']} ({meta['env']['torch_threads']} intra-op "
           "thread: two spin at OpenMP barriers when a neighbour preempts one), "
           f"load average at start {meta['env']['loadavg']}, at end {meta['loadavg_end']}. The machine is shared: compare "
           "the ratios measured side by side in this run, not the absolute times.", ""]
    flags = rep.get("flags", [])
    out += ["## Flagged numbers", ""] + ([f"- **{f['section']} — {f['what']} = {fmt(f['value'], '.3g')}** (want "
                                           f"{f['limit']}): {f['why']}." for f in flags] or ["None."]) + [""]
    if "train_cost" in rep:
        out += ["## 1. Training cost per step", "",
                "Same student init and batches in every mode; the project's AlignKDLoss and MobileVLM.forward_align "
                "(the recipe's TrainModule, its capture spec and AdamW parameter groups); plain torch steps, not "
                "DeepSpeed, so the table isolates the loss and its targets. cached = targets from a real zarr store "
                "(teacher_dump's reductions, cache_schema writer/reader, the loader's collate); online = "
                "student_train.online.OnlineTeacher in memory. Memory: persistent (weights, AdamW state, online "
                "teacher, batch + targets) + the transient peak of one step (CPU: profiler allocation timeline).", ""]
        out += train_table(rep["train_cost"], "CPU")
    for key, fn in (("data_path", data_table), ("dump_cost", dump_table), ("storage", storage_table),
                    ("fidelity", fidelity_table)):
        if key in rep:
            out += fn(rep[key])
    out += ["## 6. GPU path", "", "`python -m benchmarks.gpu_check --out results/bench_gpu` runs the training-cost table "
            "on CUDA at real widths (student 2048/16 heads, teacher 4096/32 heads, a few layers, 144 vision tokens, "
            "L_emb≈600) in fp16 and bf16 plus a DeepSpeed ZeRO-2 step; it exits with a message where CUDA is absent "
            "(as here).", ""]
    return "\n".join(out) + "\n"
