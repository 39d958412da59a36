"""`alignkd reproduce` without training: the plan (pairs, attention needs, the derived cache
workflow), the budget guard, and the tables built from real summary.json files on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignkd.reproduce_plan import (
    BudgetMismatch,
    Run,
    attn_needs,
    budget_of,
    cache_workflow,
    check_finished,
    make_plan,
    pairs,
)
from alignkd.reproduce_report import aggregate, write_report
from pipeline.workflow import ReproduceConfig, load_workflow

REPO = Path(__file__).resolve().parents[2]
TASKS = ("colour", "count")


def test_pairs_are_the_ablations_then_table1():
    cfg = ReproduceConfig()
    got = pairs(cfg, cfg.presets, cfg.subsets)
    assert got[:9] == [("short", p) for p in ("sft", "rkl", "attn", "focus", "all", "vv", "tt", "full", "last")]
    assert got[9:] == [("long", "sft"), ("long", "all")]  # Short's sft/all are Table 3's runs, not repeated
    assert pairs(cfg, ["all"], ["long"]) == [("short", "all"), ("long", "sft"), ("long", "all")]


def test_attention_needs_of_the_presets():
    assert attn_needs(["sft", "rkl"]) == set()
    assert attn_needs(["attn", "focus", "all"]) == {("first", "tv")}
    assert attn_needs(["vv", "tt", "full", "last"]) == {("first", "vv"), ("first", "tt"), ("first", "full"),
                                                        ("first", "tv"), ("last", "tv")}


def test_cache_workflow_adds_the_blocks_and_its_own_cache(tmp_path):
    src = REPO / "workflows" / "toy.yaml"
    wf = load_workflow(src)
    path = cache_workflow(src, wf, attn_needs(["vv", "last"]), tmp_path)
    got = load_workflow(path)
    assert got.cache.layers == ["first", "last"] and got.cache.blocks == ["tv", "vv"]
    assert got.cache_path("short") == tmp_path / "cache" / "short.zarr"
    # everything else is the source workflow's
    assert (got.train, got.data, got.models, got.cache.logits_topk) == (wf.train, wf.data, wf.models, wf.cache.logits_topk)


def _finished_run(root: Path, subset: str, preset: str, seed: int, accs: tuple[float, float], budget: dict,
                  gap: float | None = None) -> Run:
    run = Run(subset, preset, seed, root / "runs" / subset / preset / f"seed_{seed}", "w.yaml")
    (run.dir / "eval").mkdir(parents=True)
    per = {t: {"acc": a, "n": 10} for t, a in zip(TASKS, accs)}
    summary = {"overall": sum(accs) / 2, "n": 20, "per_task": per}
    if gap is not None:
        summary["image_use"] = {"loss_own_image": 1.0, "loss_other_image": 1.0 + gap, "gap": gap}
        summary["transfer"] = {"rkl": 2 * gap, "attn_corr": 1 - gap}
    run.summary.write_text(json.dumps(summary))
    # the per-question answers the paired interval is bootstrapped from: 10 questions per task,
    # the first acc*10 of them right
    preds = [{"question_id": f"{t}-{i}", "task": t, "correct": i < round(a * 10)} for t, a in zip(TASKS, accs) for i in range(10)]
    (run.dir / "eval" / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    (run.dir / "reproduce_run.json").write_text(json.dumps({"budget": budget, "train_seconds": 60.0, "eval_seconds": 5.0,
                                                            "commands": ["alignkd student-train", "alignkd eval"]}))
    return run


def test_tables_mean_std_and_paired_delta(tmp_path):
    b = {"max_steps": 0}
    runs = [_finished_run(tmp_path, "short", "sft", 0, (0.5, 0.3), b), _finished_run(tmp_path, "short", "sft", 1, (0.7, 0.3), b),
            _finished_run(tmp_path, "short", "all", 0, (0.6, 0.4), b, gap=0.1),
            _finished_run(tmp_path, "short", "all", 1, (0.8, 0.6), b, gap=0.3),
            Run("short", "vv", 0, tmp_path / "runs" / "short" / "vv" / "seed_0", "w.yaml")]  # not run yet
    results, tasks = aggregate(runs)
    assert tasks == list(TASKS)
    sft, al = results["short/sft"], results["short/all"]
    assert sft["overall"]["mean"] == pytest.approx(0.45) and sft["overall"]["std"] == pytest.approx(0.0707107, rel=1e-5)
    assert al["per_task"]["count"]["mean"] == pytest.approx(0.5)
    assert al["delta_vs_sft"]["values"] == pytest.approx([0.1, 0.2])  # paired by seed
    assert results["short/vv"]["seeds"] == [] and results["short/vv"]["overall"]["mean"] is None

    md = write_report(tmp_path, runs, {"seeds": [0, 1], "command": "alignkd reproduce", "samples": {"short": 99}}, 1.0)
    doc = json.loads((tmp_path / "reproduce.json").read_text())
    assert [r["result"] for r in doc["tables"]["table3"]["rows"]] == ["short/sft", "short/all"]
    assert [r["result"] for r in doc["tables"]["table4"]["rows"]] == ["short/all", "short/vv"]
    assert [r["result"] for r in doc["tables"]["table1"]["rows"]] == ["short/sft", "short/all"]
    row = next(x for x in md.splitlines() if x.startswith("| + all vision tokens"))
    lo, hi = al["delta_ci95"]  # paired over seeds and questions: contains the mean
    assert 0.0 <= lo < 0.15 < hi <= 0.35
    assert (f"| 2/2 | 70.0 ± 14.1 | 50.0 ± 14.1 | **60.0 ± 14.1** | +15.0 ± 7.1 [{100 * lo:+.1f}, {100 * hi:+.1f}] "
            "| +0.400 ± 0.283 | +0.800 ± 0.141 | +0.200 ± 0.141 | 64.4 |") in row
    sft_row = next(x for x in md.splitlines() if x.startswith("| Supervised fine-tuning") or "`sft`" in x)
    assert "| — |" in sft_row  # runs without an image-use measure show none
    assert next(x for x in md.splitlines() if x.startswith("| A_vv")).count("—") == 6  # 2 tasks, overall, transfer x2, image use
    assert "| Short / 99 | - | `sft` |" in md


def test_finished_runs_of_another_budget_are_refused(tmp_path):
    wf = load_workflow(REPO / "workflows" / "toy.yaml")
    old, new = budget_of(wf, 2, 16), budget_of(wf, 0, 0)
    done = _finished_run(tmp_path, "short", "sft", 0, (0.5, 0.5), old)
    check_finished([done], old)  # same budget: fine
    with pytest.raises(BudgetMismatch, match=r"another budget \(max_steps 2, eval_limit 16.*short/sft/seed_0"):
        check_finished([done], new)
    half = Run("short", "all", 0, tmp_path / "half", "w.yaml")  # unfinished, other budget: restarted
    half.dir.mkdir()
    (half.dir / "reproduce_run.json").write_text(json.dumps({"budget": old}))
    check_finished([half], new)
    assert not half.dir.exists()


def test_plan_reads_the_workflows_own_cache_where_it_suffices(tmp_path):
    src = REPO / "workflows" / "toy.yaml"
    wf = load_workflow(src)
    runs, derived = make_plan(src, wf, [0, 1], ["sft", "all", "vv"], ["short", "long"], tmp_path)
    assert derived == tmp_path / "workflow.yaml"
    assert [r.name for r in runs[:6]] == ["short/sft/seed_0", "short/all/seed_0", "short/vv/seed_0",
                                          "long/sft/seed_0", "long/all/seed_0", "short/sft/seed_1"]  # seed-major
    assert len(runs) == 10
    assert {r.preset for r in runs if r.workflow == str(derived)} == {"vv"}
    assert {r.workflow for r in runs if r.preset != "vv"} == {str(src)}
    assert set(load_workflow(derived).cache.blocks) == {"tv", "vv", "tt", "full"}  # every preset's maps
    assert make_plan(src, wf, [0], ["sft", "all"], ["short"], tmp_path / "b")[1] is None
