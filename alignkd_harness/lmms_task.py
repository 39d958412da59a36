"""A workflow's held-out split (data.eval, e.g. the toy world's eval.json) as a local lmms-eval task.

    python -m alignkd_harness.lmms_task --workflow workflows/toy.yaml --out runs/toy/lmms_task
    lmms-eval --model alignkd --model_args pretrained=<export> --include_path runs/toy/lmms_task \\
        --tasks alignkd_toy_eval --batch_size 32 --output_path runs/toy/lmms_out --log_samples

writes OUT/docs.jsonl (one flat document per record: id, task, question = the human turn verbatim,
answer, image = absolute path), OUT/<task>.yaml (greedy, the workflow's eval.max_new_tokens, no
stop strings, alignkd's exact match per task type) and OUT/utils.py (re-exports task_utils.py).
Only single-question records (one human turn, then the answer) are written: the harness asks one
context per question; any other record is refused by id.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.workflow import load_workflow

UTILS = """# written by alignkd_harness.lmms_task: the task's functions live in the alignkd package
from alignkd_harness.task_utils import doc_to_target, doc_to_text, doc_to_visual, process_results  # noqa: F401
"""


def documents(records: list[dict], image_root: Path, source: str) -> list[dict]:
    docs = []
    for i, r in enumerate(records):
        rid = str(r.get("id", i))
        conv = r.get("conversations") or []
        if len(conv) != 2 or conv[0].get("from") != "human" or conv[1].get("from") != "gpt":
            raise ValueError(f"{source}: record {rid}: a harness task takes one question and its answer "
                             f"(human, gpt); this record has {len(conv)} turns")
        docs.append({"id": rid, "task": str(r.get("task", "all")), "question": conv[0]["value"],
                     "answer": str(r.get("answer", conv[1]["value"])),
                     "image": str((image_root / r["image"]).resolve()) if r.get("image") else ""})
    return docs


def task_yaml(name: str, docs_path: Path, max_new_tokens: int, tasks: list[str]) -> str:
    metrics = "".join(f"  - metric: exact_match{s}\n    aggregation: mean\n    higher_is_better: true\n"
                      for s in ["", *(f"_{t}" for t in tasks)])
    return (f"# written by alignkd_harness.lmms_task\n"
            f"task: {name}\n"
            f"dataset_path: json\n"
            f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(docs_path))}\n"
            f"test_split: test\n"
            f"output_type: generate_until\n"
            f"doc_to_visual: !function utils.doc_to_visual\n"
            f"doc_to_text: !function utils.doc_to_text\n"
            f"doc_to_target: !function utils.doc_to_target\n"
            f"process_results: !function utils.process_results\n"
            # until: [] -- no stop strings (lmms-eval's default is "\n\n"): alignkd eval has none
            f"generation_kwargs:\n  max_new_tokens: {max_new_tokens}\n  until: []\n  do_sample: false\n"
            f"  temperature: 0\n  num_beams: 1\n"
            f"metric_list:\n{metrics}"
            f"metadata:\n  version: 1.0\n")


def write_task(workflow: str | Path, out: str | Path, name: str | None = None, limit: int = 0) -> Path:
    """Write the task directory; returns the YAML's path."""
    wf = load_workflow(workflow)
    if wf.data.eval is None:
        raise ValueError(f"{workflow}: data.eval is not set: no held-out split to make a task of")
    src = Path(wf.data.eval.json)
    records = json.loads(src.read_text())
    records = records[:limit] if limit else records
    docs = documents(records, Path(wf.data.eval.image_root), str(src))
    name = name or f"alignkd_{wf.name}_eval"
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    docs_path = out / "docs.jsonl"
    docs_path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (out / "utils.py").write_text(UTILS)
    yaml_path = out / f"{name}.yaml"
    tasks = sorted({d["task"] for d in docs})
    yaml_path.write_text(task_yaml(name, docs_path, wf.eval.max_new_tokens, tasks))
    return yaml_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m alignkd_harness.lmms_task", description=__doc__.split("\n\n")[0])
    ap.add_argument("--workflow", default="workflows/toy.yaml", help="workflow YAML (its data.eval split)")
    ap.add_argument("--out", required=True, help="task directory (lmms-eval --include_path)")
    ap.add_argument("--name", default=None, help="task name (default alignkd_<workflow name>_eval)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N records (0: all)")
    a = ap.parse_args(argv)
    try:
        path = write_task(a.workflow, a.out, a.name, a.limit)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{path}: task {path.stem}; run with --include_path {path.parent} --tasks {path.stem}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
