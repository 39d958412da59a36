"""lmms-eval itself scores a tiny checkpoint on the local task (alignkd_harness.lmms_task) with the
model class `--model alignkd`, and agrees with `alignkd eval` question by question (answer text
and verdict). Marked `external`: lmms-eval weighs ~2.5 GB, so it is not in the test install and
every default run deselects this test. Set ALIGNKD_HARNESS_VENV to a venv holding this checkout with
the extra (README: "Scoring with a benchmark harness") and select it, e.g.

    ALIGNKD_HARNESS_VENV=/path/to/hvenv .venv/bin/python -m pytest -q -m external tests/alignkd_harness/test_lmms_eval.py
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from alignkd_harness.compare import _jsonl, compare, samples_file
from alignkd_harness.lmms_task import write_task
from evaluation.heldout import evaluate, write_predictions
from pipeline.models import MobileVLM
from pipeline.tokenizer_load import load_tokenizer
from tests.alignkd_harness.harness_fixtures import write_checkpoint, write_records
from tests.external import external_env
from tests.pipeline.data_fixtures import write_json, write_workflow


@pytest.mark.slow
@pytest.mark.external
def test_lmms_eval_scores_the_local_task_as_alignkd_eval_does(tmp_path, toy_vision_dir):
    venv = external_env("ALIGNKD_HARNESS_VENV", "a venv with `pip install -e '.[harness]'` of this checkout")
    lmms = Path(venv) / "bin" / "lmms-eval"
    assert lmms.exists(), f"{lmms} not found: ALIGNKD_HARNESS_VENV must hold lmms-eval (the harness extra)"
    ck, recs, root = write_checkpoint(tmp_path, toy_vision_dir), write_records(tmp_path), tmp_path / "img"
    model, tok = MobileVLM.from_pretrained(ck), load_tokenizer(ck)
    first = evaluate(model, tok, recs, root, "v1", batch_size=32, max_new_tokens=6, progress=False)
    for i in (0, 4, 5):  # a mix of right and wrong verdicts
        recs[i]["answer"] = first[i].prediction.upper() + "."
    wf = write_workflow(tmp_path / "wf.yaml", [], ck, tmp_path,
                        eval={"name": "ev", "json": str(write_json(tmp_path / "eval.json", recs)),
                              "image_root": str(root), "template": "v1", "stage": "finetune"})
    cfg = yaml.safe_load(wf.read_text())
    wf.write_text(yaml.safe_dump({**cfg, "eval": {"batch_size": 32, "max_new_tokens": 6}}))  # alignkd eval's settings
    task = write_task(wf, tmp_path / "task")
    ours = evaluate(model, tok, recs, root, "v1", batch_size=32, max_new_tokens=6, progress=False)
    write_predictions(ours, tmp_path / "predictions.jsonl")

    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([str(lmms), "--model", "alignkd", "--model_args", f"pretrained={ck}",
                          "--include_path", str(task.parent), "--tasks", task.stem, "--batch_size", "32",
                          "--device", "cpu", "--output_path", str(tmp_path / "out"), "--log_samples"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    r = compare(_jsonl(task.parent / "docs.jsonl"), _jsonl(samples_file(tmp_path / "out")),
                _jsonl(tmp_path / "predictions.jsonl"))
    assert r["n"] == len(recs) and r["same_answer"] == r["same_verdict"] == len(recs), r["differ"]
    assert r["harness_em"] == r["alignkd_em"] == sum(p.correct for p in ours) / len(recs) >= 3 / len(recs)
    results = sorted((tmp_path / "out").rglob("*_results.json"))
    assert results, "lmms-eval wrote no results file"
    agg = json.loads(results[-1].read_text())["results"][task.stem]
    assert agg["exact_match,none"] == pytest.approx(r["alignkd_em"])
