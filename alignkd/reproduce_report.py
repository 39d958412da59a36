"""`alignkd reproduce`'s results: mean ± std over seeds per (subset, preset), laid out like the
paper's Tables 3, 4 and Table 1's bottom block, as <out>/reproduce.md and <out>/reproduce.json.

Rewritten after every finished run, so it always shows what is there; rows still running show "—".
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

# (preset, label, the paper's Avg. over its six benchmarks) — paper Tables 3 and 4, Short subset
TABLE3 = [
    ("sft", "SFT only (no teacher)", 62.4),
    ("rkl", "+ RKLD on the outputs", 63.0),
    ("attn", "+ first-layer T→V attention", 63.6),
    ("focus", "+ focused vision tokens", 63.8),
    ("all", "+ all vision tokens (= Align-KD)", 64.4),
]
TABLE4 = [
    ("all", "A_tv, first layer (Align-KD)", 64.4),
    ("vv", "A_vv, first layer", 43.7),
    ("tt", "A_tt, first layer", 63.2),
    ("full", "full A, first layer", 63.5),
    ("last", "A_tv, first + last layer", 64.1),
]
# (subset, preset, Align-KD mark, paper Avg.) — paper Table 1, bottom block
TABLE1 = [("short", "sft", "-", 62.4), ("short", "all", "✓", 64.4),
          ("long", "sft", "-", 63.7), ("long", "all", "✓", 65.1)]


def write_atomic(path: Path, text: str) -> None:
    """Readers (and a rerun after a kill) never see a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


TIMES = ("train_seconds", "train_cpu_seconds", "eval_seconds", "eval_cpu_seconds")


def _stats(values: list[float]) -> dict:
    """mean and sample std (None with one value) of `values`."""
    return {"mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None, "values": values}


def _summary(run) -> dict | None:
    return json.loads(run.summary.read_text()) if run.summary.is_file() else None


def aggregate(runs: list) -> tuple[dict, list[str]]:
    """{"subset/preset": {subset, preset, seeds, n_planned, overall, per_task, delta_vs_sft}}, tasks."""
    groups: dict[str, list] = {}
    for r in runs:
        groups.setdefault(f"{r.subset}/{r.preset}", []).append(r)
    done = {r.name: s for r in runs if (s := _summary(r)) is not None}
    tasks = sorted({t for s in done.values() for t in s["per_task"]})
    results = {}
    for key, rs in groups.items():
        got = [(r.seed, done[r.name]) for r in rs if r.name in done]
        results[key] = {
            "subset": rs[0].subset, "preset": rs[0].preset, "seeds": [seed for seed, _ in got], "n_planned": len(rs),
            "overall": _stats([s["overall"] for _, s in got]),
            "per_task": {t: _stats([s["per_task"][t]["acc"] for _, s in got if t in s["per_task"]]) for t in tasks},
            # nats/token the held-out caption loss rises with another image (evaluation.heldout.image_use)
            "image_use_gap": _stats([s["image_use"]["gap"] for _, s in got if "image_use" in s]),
        }
    for key, res in results.items():  # Δ to the SFT student of the same subset, paired by seed
        base = results.get(f"{res['subset']}/sft")
        if base is None or res["preset"] == "sft":
            res["delta_vs_sft"] = None
            continue
        b = dict(zip(base["seeds"], base["overall"]["values"]))
        res["delta_vs_sft"] = _stats([v - b[s] for s, v in zip(res["seeds"], res["overall"]["values"]) if s in b])
        res["delta_ci95"] = _paired_ci(groups[key], groups[f"{res['subset']}/sft"], set(done))
    for key, rs in groups.items():  # transfer from the teacher (eval --teacher): reverse KL, attention agreement
        tr = [s["transfer"] for r in rs if r.name in done and "transfer" in (s := done[r.name])]
        results[key]["transfer_rkl"] = _stats([t["rkl"] for t in tr])
        results[key]["transfer_attn_r"] = _stats([t["attn_corr"] for t in tr if "attn_corr" in t])
    return results, tasks


def _paired_ci(runs: list, sft_runs: list, done: set[str]) -> list[float] | None:
    """95% paired bootstrap interval of (preset − SFT) exact match over seeds (the seeds both have)
    and questions (the same held-out questions): [lo, hi], or None without predictions."""
    from evaluation.paired import correctness, paired_diff

    sft = {r.seed: r for r in sft_runs if r.name in done}
    pairs = [(r, sft[r.seed]) for r in runs if r.name in done and r.seed in sft]
    files = [(r.dir / "eval" / "predictions.jsonl", b.dir / "eval" / "predictions.jsonl") for r, b in pairs]
    if not files or not all(a.is_file() and b.is_file() for a, b in files):
        return None
    read = lambda f: [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    ids, _ = correctness(read(files[0][1]))
    a = [correctness(read(fa), ids)[1] for fa, _ in files]
    b = [correctness(read(fb), ids)[1] for _, fb in files]
    d = paired_diff(a, b)
    return [d["lo"], d["hi"]]


def _cell(st: dict | None) -> str:
    if not st or st["mean"] is None:
        return "—"
    return f"{100 * st['mean']:.1f}" + (f" ± {100 * st['std']:.1f}" if st["std"] is not None else "")


def _delta(st: dict | None, ci: list[float] | None = None) -> str:
    if not st or st["mean"] is None:
        return ""
    return (f"{100 * st['mean']:+.1f}" + (f" ± {100 * st['std']:.1f}" if st["std"] is not None else "")
            + (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else ""))


def _gap(st: dict | None) -> str:
    if not st or st["mean"] is None:
        return "—"
    return f"{st['mean']:+.3f}" + (f" ± {st['std']:.3f}" if st["std"] is not None else "")


def _table(head: list[str], rows: list[tuple[list[str], dict]], tasks: list[str]) -> list[str]:
    """rows: (leading cells + the paper's Avg. last, aggregated result)."""
    cols = head + ["seeds", *tasks, "**overall**", "Δ vs SFT [95%]", "RKL to teacher", "T→V attn r", "image-use gap",
                   "paper Avg."]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for cells, res in rows:
        first, paper = cells[:-1], cells[-1]
        n = f"{len(res['seeds'])}/{res['n_planned']}"
        cells = [_cell(res["per_task"].get(t)) for t in tasks]
        lines.append("| " + " | ".join([*first, n, *cells, f"**{_cell(res['overall'])}**",
                                          _delta(res["delta_vs_sft"], res.get("delta_ci95")),
                                          _gap(res.get("transfer_rkl")), _gap(res.get("transfer_attn_r")),
                                          _gap(res.get("image_use_gap")), paper]) + " |")
    return lines


def tables(results: dict, ablation_subset: str, samples: dict) -> dict[str, tuple[str, list[str], list]]:
    """name → (title, leading column names, [([leading cells..., paper Avg.], result key)])."""
    def rows(spec):
        return [(cells, key) for cells, key in spec if key in results]

    a = ablation_subset
    used = {f"{a}/{p}" for p, _, _ in TABLE3 + TABLE4} | {f"{s}/{p}" for s, p, _, _ in TABLE1}
    out = {
        "table3": (f"Table 3 — the Align-KD terms added one by one ({a.capitalize()} subset)", ["Method", "preset"],
                   rows([([lab, f"`{p}`", f"{avg}"], f"{a}/{p}") for p, lab, avg in TABLE3])),
        "table4": (f"Table 4 — which attention map is distilled (full Align-KD otherwise; {a.capitalize()} subset)",
                   ["Attention distilled", "preset"],
                   rows([([lab, f"`{p}`", f"{avg}"], f"{a}/{p}") for p, lab, avg in TABLE4])),
        "table1": ("Table 1, bottom block — Short vs Long subset, without / with Align-KD",
                   ["Subset / #samples", "Align-KD", "preset"],
                   rows([([f"{s.capitalize()} / {samples.get(s, '?')}", mark, f"`{p}`", f"{avg}"], f"{s}/{p}")
                         for s, p, mark, avg in TABLE1])),
        "other": ("Other runs", ["subset", "preset"],
                  [([res["subset"], f"`{res['preset']}`", ""], key) for key, res in results.items() if key not in used]),
    }
    return {k: v for k, v in out.items() if v[2]}


def write_report(out: Path, runs: list, meta: dict, seconds: float) -> str:
    """Write reproduce.md and reproduce.json from every finished run; return the markdown."""
    results, tasks = aggregate(runs)
    tabs = tables(results, meta.get("ablation_subset", "short"), meta.get("samples", {}))
    first = next((s for r in runs if (s := _summary(r)) is not None), None)
    n_q = first["n"] if first else 0
    n_task = {t: v["n"] for t, v in first["per_task"].items()} if first else {}
    recs = {}
    for r in runs:
        f = r.dir / "reproduce_run.json"
        recs[r.name] = json.loads(f.read_text()) if f.is_file() else {}
    n_done = sum(r.summary.is_file() for r in runs)
    seeds = ", ".join(map(str, meta.get("seeds", [])))
    md = [
        "# Align-KD at toy scale: the paper's Tables 3, 4 and Table 1 (bottom block)", "",
        f"{meta.get('date', '')} · git `{meta.get('git', '')}` · {n_done}/{len(runs)} runs finished · "
        f"{seconds / 60:.1f} min this invocation", "",
        f"    {meta.get('command', '')}", "",
        f"Held-out exact match (%) on {n_q} questions of the toy eval split, per task type "
        f"({', '.join(f'{t} {n}' for t, n in n_task.items())}) and overall: mean ± sample std over seeds "
        f"{seeds} (`seeds`: finished/planned). Δ vs SFT: the difference from the SFT-only student of the same "
        "subset, paired by seed, with its 95% paired bootstrap interval over seeds and questions in brackets. "
        "*RKL to teacher* (nats per answer token) and *T→V attn r* (head-averaged first-layer text→vision "
        "attention vs the teacher's): transfer measured without accuracy (`evaluation.transfer`). "
        "*image-use gap*: how much the loss on held-out image descriptions (nats/token) rises when the "
        "model is shown another image (0: image-blind; `evaluation.heldout.image_use`). "
        "*paper Avg.* is the paper's average over its six benchmarks (MobileVLM V2 "
        "1.7B students of a 7B teacher): compare the direction of each effect, not the value.", "",
    ]
    for title, head, rows in tabs.values():
        md += [f"## {title}", "", *_table(head, [(c, results[k]) for c, k in rows], tasks), ""]
    md += ["## Runs", "", "Wall and CPU seconds of each command (CPU: the command and the processes it waited for).", "",
           "| run | overall | train s | train CPU s | eval s | eval CPU s | workflow |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        s, rec = _summary(r), recs[r.name]
        em = f"{100 * s['overall']:.1f}" if s else ("failed" if rec.get("rc") else "—")
        secs = " | ".join(str(rec.get(k, "")) for k in TIMES)
        md.append(f"| `{r.name}` | {em} | {secs} | `{r.workflow}` |")
    cpu = sum(rec.get(k) or 0 for rec in recs.values() for k in ("train_cpu_seconds", "eval_cpu_seconds"))
    md += [f"\nCPU seconds of the runs listed: {cpu:.0f} ({cpu / 3600:.2f} CPU hours).", ""]
    text = "\n".join(md)
    write_atomic(out / "reproduce.md", text)
    doc = {**meta, "seconds": round(seconds, 1), "n_questions": n_q, "tasks": tasks, "results": results,
           "tables": {k: {"title": t, "rows": [{"cells": c, "result": key} for c, key in rows]}
                      for k, (t, _, rows) in tabs.items()},
           "runs": [{"run": r.name, "subset": r.subset, "preset": r.preset, "seed": r.seed, "dir": str(r.dir),
                     "workflow": r.workflow, "summary": _summary(r), **{k: recs[r.name].get(k) for k in
                     ("commands", *TIMES, "rc", "failed")}} for r in runs]}
    write_atomic(out / "reproduce.json", json.dumps(doc, indent=2))
    return text
