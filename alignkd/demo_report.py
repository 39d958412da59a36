"""The demo's report directory: summary.md, accuracy plots, loss curves, the commands it ran."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np

MODELS = ("teacher", "sft", "alignkd")
LABELS = {"teacher": "toy teacher (sft)", "sft": "SFT student", "alignkd": "Align-KD student"}
LOSS_TERMS = ("loss", "sup", "rkl", "attn", "focus", "all_tokens")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def accuracy_table(report: Path) -> dict[str, dict]:
    return {m: json.loads((report / "eval" / m / "summary.json").read_text()) for m in MODELS}


# (a, b) pairs the report compares, each as a paired 95% bootstrap over the same questions
COMPARISONS = (("teacher", "sft"), ("alignkd", "sft"), ("teacher", "alignkd"))


def paired_comparisons(report: Path) -> dict[str, dict]:
    """{"a-b": paired_diff} of exact match from the models' predictions.jsonl (same questions)."""
    from evaluation.paired import correctness, paired_diff

    preds = {m: _read_jsonl(report / "eval" / m / "predictions.jsonl") for m in MODELS}
    ids, _ = correctness(preds["sft"])
    return {f"{a}-{b}": paired_diff(correctness(preds[a], ids)[1], correctness(preds[b], ids)[1]) for a, b in COMPARISONS}


def plot_accuracy(acc: dict[str, dict], path: Path) -> None:
    """Per-task exact match of the three models (a bar version of the paper's Figure 1)."""
    tasks = sorted({t for s in acc.values() for t in s["per_task"]}) + ["overall"]
    x = np.arange(len(tasks))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(tasks)), 3.8))
    for i, m in enumerate(MODELS):
        vals = [acc[m]["per_task"].get(t, {}).get("acc", 0) if t != "overall" else acc[m]["overall"] for t in tasks]
        ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=LABELS[m])
    ax.set_xticks(x, tasks, rotation=20)
    ax.set(ylabel="exact match", ylim=(0, 1), title="held-out accuracy per task")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_losses(students: Path, path: Path) -> None:
    """Loss terms per optimiser step of both students, pre-training then fine-tuning."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    for ax, stage in zip(axes, ("pretrain", "finetune")):
        for name, style in (("alignkd", "-"), ("sft", "--")):
            rows = _read_jsonl(students / name / stage / "metrics.jsonl")
            for term in LOSS_TERMS:
                ys = [r[term] for r in rows if term in r]
                if ys:
                    ax.plot(range(1, len(ys) + 1), ys, style, label=f"{name}: {term}", lw=1)
        ax.set(title=f"{stage}", xlabel="optimiser step", yscale="log")
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: Path, models: dict[str, Path], students: Path, heatmaps: list[Path],
                 steps: list[dict], seconds: float) -> str:
    acc = accuracy_table(report)
    plot_accuracy(acc, report / "accuracy.png")
    plot_losses(students, report / "losses.png")
    tasks = sorted({t for s in acc.values() for t in s["per_task"]})
    head = "| model | overall | " + " | ".join(tasks) + " |"
    rows = [head, "|" + "---|" * (len(tasks) + 2)]
    for m in MODELS:
        cells = [f"{acc[m]['per_task'].get(t, {}).get('acc', float('nan')):.3f}" for t in tasks]
        rows.append(f"| {LABELS[m]} | **{acc[m]['overall']:.3f}** | " + " | ".join(cells) + " |")
    from evaluation.paired import fmt_diff

    cmp = paired_comparisons(report)
    verdict = (f"Differences in points of exact match on the same {acc['sft']['n']} held-out questions, with paired "
               "95% bootstrap intervals: teacher − SFT student " + fmt_diff(cmp["teacher-sft"]) +
               " (what distillation could close); Align-KD − SFT student " + fmt_diff(cmp["alignkd-sft"]) +
               "; teacher − Align-KD student " + fmt_diff(cmp["teacher-alignkd"]) + ".")
    other = {m: acc[m].get("other_image") for m in MODELS}
    if all(other.values()):
        verdict += ("\n\nWith another record's image (same questions): " + ", ".join(
            f"{LABELS[m]} {other[m]['overall']:.3f} (drop {other[m]['drop']:+.3f}"
            + (f", 95% [{other[m]['drop_ci95'][0]:+.3f}, {other[m]['drop_ci95'][1]:+.3f}])" if "drop_ci95" in other[m] else ")")
            for m in MODELS)
            + "; the drop is what each model answers from the image.")
    use = {m: acc[m].get("image_use") for m in MODELS}
    use_rows = []
    if all(use.values()):
        n_cap = use["teacher"]["n_captions"]
        use_rows = ["## Image use (held-out descriptions)", "",
                    f"Loss (nats/token) of each model on the description of each of {n_cap} held-out images "
                    "(\"describe the image\"), shown that image and another one; the gap is how much its text "
                    "depends on the image (0: image-blind). It moves before exact match does.", "",
                    "| model | own image | other image | gap |", "|---|---|---|---|",
                    *[f"| {LABELS[m]} | {use[m]['loss_own_image']:.3f} | {use[m]['loss_other_image']:.3f} | "
                      f"**{use[m]['gap']:+.3f}** |" for m in MODELS], ""]
    tr = {m: acc[m].get("transfer") for m in ("sft", "alignkd")}
    transfer_rows = []
    if all(tr.values()):
        transfer_rows = ["## Transfer from the teacher (held-out questions, no accuracy involved)", "",
                         "Each student's reverse KL to the teacher on the answer tokens (lower: closer to the "
                         "teacher's output distribution) and the agreement of its head-averaged first-layer "
                         "T→V attention with the teacher's (Pearson r over every text-query × vision-token entry; "
                         "MSE). An SFT student never saw the teacher: the difference is what distillation moved.", "",
                         "| student | reverse KL (nats/token) | attention r | attention MSE |", "|---|---|---|---|",
                         *[f"| {LABELS[m]} | {tr[m]['rkl']:.4f} | {tr[m].get('attn_corr', float('nan')):.3f} | "
                           f"{tr[m].get('attn_mse', float('nan')):.2e} |" for m in ("sft", "alignkd")], ""]
    md = [
        "# alignkd demo report", "",
        f"Whole pipeline in {seconds / 60:.1f} min. Models: " + ", ".join(f"`{p}`" for p in models.values()), "",
        "## Held-out exact match", "", *rows, "", verdict, "",
        "![accuracy](accuracy.png)", "", *transfer_rows, *use_rows, "## Training losses", "", "![losses](losses.png)", "",
        "## Teacher first-layer T→V attention over the image (from the cache; focus tokens marked)", "",
        *([f"![{p.stem}]({p.name})" for p in heatmaps] or [
            "None drawn: this cache keeps no attention (`cache.attention: recompute`, the default when the "
            "student shares the teacher's tower: the student rebuilds it from the teacher weights the store "
            "keeps). A store dumped with `cache.attention: stored` has maps for `alignkd cache show --png`."]), "",
        "## Layer probe of the teacher (paper §3.1, Figure 2)", "", "![probe](probe_teacher/layers.png)", "",
        "## Commands run", "", "| # | step | seconds | command |", "|---|---|---|---|",
        *[f"| {s['step']} | {s['title']}{' (in parallel)' if s.get('parallel') else ''} | {s['seconds']} | `{s['command']}` |"
          for s in steps], "",
    ]
    (report / "summary.md").write_text("\n".join(md))
    (report / "summary.json").write_text(json.dumps({"accuracy": acc, "comparisons": cmp, "steps": steps,
                                                     "seconds": seconds}, indent=2))
    gaps = "" if not all(use.values()) else "\nimage-use gap (nats/token): " + ", ".join(
        f"{LABELS[m]} {use[m]['gap']:+.3f}" for m in MODELS)
    return "\n".join(rows) + "\n" + verdict + gaps
