"""A shortened `alignkd demo` end to end: every stage runs through the real CLI (toy world,
manifest, teacher training on DeepSpeed, teacher dump on Ray, two students, eval, report) and
each stage's output is what the next one consumed."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ALIGNKD = str(Path(sys.executable).with_name("alignkd"))


def small_workflow(tmp: Path) -> Path:
    wf = yaml.safe_load((REPO / "workflows/toy.yaml").read_text())
    wf["world"].update(n_images=48, n_eval_images=16, n_pretrain=48, n_finetune=96, n_eval=24, tower_steps=20)
    wf["demo"].update(teacher_pretrain_steps=3, teacher_finetune_steps=6, heatmaps=1)
    wf["train"]["deepspeed_config"] = str(REPO / "workflows/zero2.json")
    wf["train"]["save_every"] = 0
    for stage in ("pretrain", "finetune"):
        wf["train"][stage] = {**wf["train"].get(stage, {}), "max_steps": 3}
    path = tmp / "demo.yaml"
    path.write_text(yaml.safe_dump(wf))
    return path


@pytest.mark.slow
def test_shortened_demo_runs_every_stage_and_writes_the_report(tmp_path):
    wf = small_workflow(tmp_path)
    proc = subprocess.run([ALIGNKD, "demo", "--workflow", str(wf)], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    run = tmp_path / "runs/toy"
    report = run / "report"
    steps = json.loads((report / "commands.json").read_text())
    assert steps and all(s["rc"] == 0 for s in steps)
    titles = " | ".join(s["title"] for s in steps)
    for stage in ("toy world", "manifest", "teacher", "teacher dump", "alignkd student", "sft student", "evaluate"):
        assert stage in titles, titles
    # the three evals and the probe ran side by side (one thread each), each with its own log
    par = [s for s in steps if s.get("parallel")]
    assert [s["title"].split()[:3] for s in par] == [["evaluate", "the", "teacher"], ["evaluate", "the", "sft"],
                                                     ["evaluate", "the", "alignkd"], ["layer", "probe", "of"]]
    assert all((tmp_path / s["log"]).stat().st_size > 0 for s in par)  # relative to the demo's directory
    # the teacher's two stages are one command and one launch (fine-tuning in pre-training's ranks)
    pids = [json.loads((run / "teacher_run" / st / "run.json").read_text())["pid"] for st in ("pretrain", "finetune")]
    assert pids[0] == pids[1] and sum("toy teacher" in s["title"] for s in steps) == 1
    # manifest -> cache: the store covers exactly the Short subset and verifies
    rows = pq.read_table(run / "manifest.parquet", columns=["sample_id", "in_short"]).to_pylist()
    short = {r["sample_id"] for r in rows if r["in_short"]}
    ls = subprocess.run([ALIGNKD, "cache", "verify", str(run / "cache/short.zarr")], cwd=tmp_path, capture_output=True, text=True)
    assert ls.returncode == 0, ls.stdout + ls.stderr
    from cache_schema import CacheReader

    assert set(CacheReader(run / "cache/short.zarr").sample_ids) == short
    # cache -> students -> eval -> report
    for name in ("teacher", "sft", "alignkd"):
        preds = [json.loads(x) for x in (report / "eval" / name / "predictions.jsonl").read_text().splitlines()]
        assert len(preds) == 24 and set(preds[0]) >= {"question_id", "prompt", "answer", "prediction", "correct"}
        got = json.loads((report / "eval" / name / "summary.json").read_text())
        assert got["other_image"]["drop"] == pytest.approx(got["overall"] - got["other_image"]["overall"], abs=1e-4)
        # share of answers that change with another image (0 for these barely trained, image-blind
        # models is legitimate; that the swap swaps is tests/evaluation/test_heldout.py's job)
        assert 0.0 <= got["other_image"]["answers_changed"] <= 1.0, name
        use = got["image_use"]
        assert use["n_captions"] == 16 and use["gap"] == pytest.approx(use["loss_other_image"] - use["loss_own_image"], abs=2e-4)
    # transfer (no accuracy involved) of both students, and the paired intervals of the report
    acc = {n: json.loads((report / "eval" / n / "summary.json").read_text()) for n in ("teacher", "sft", "alignkd")}
    for name in ("sft", "alignkd"):
        tr = acc[name]["transfer"]
        assert tr["n_records"] == 24 and tr["n_answer_tokens"] >= 24 and tr["rkl"] > 0 and "attn_corr" in tr, tr
    comps = json.loads((report / "summary.json").read_text())["comparisons"]
    assert set(comps) == {"teacher-sft", "alignkd-sft", "teacher-alignkd"}
    for pair, c in comps.items():
        a, b = pair.split("-")
        assert c["diff"] == pytest.approx(acc[a]["overall"] - acc[b]["overall"], abs=1e-4)
        assert c["lo"] <= c["diff"] <= c["hi"] and c["n_questions"] == 24
    # the adapters pre-training trained are what fine-tuning starts from
    assert (run / "students/alignkd/pretrain/adapters.pt").is_file()
    assert "adapters carried from" in proc.stdout + proc.stderr
    metrics = (run / "students/alignkd/finetune/metrics.jsonl").read_text().splitlines()
    assert metrics and {"rkl", "attn", "focus", "all_tokens", "sup"} <= set(json.loads(metrics[-1]))
    summary = (report / "summary.md").read_text()
    assert "Align-KD student" in summary and "alignkd teacher-dump" in summary and "## Image use" in summary
    assert "With another record's image" in summary and "paired 95% bootstrap" in summary
    assert "## Transfer from the teacher" in summary
    for png in ("accuracy.png", "losses.png", "probe_teacher/layers.png"):
        assert (report / png).stat().st_size > 1000, png
    # the default cache recomputes the teacher's attention (cache.attention auto): no stored maps to draw
    assert not (report / "attention_0.png").exists() and "keeps no attention" in summary
