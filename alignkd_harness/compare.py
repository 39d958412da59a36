"""Does a harness score a checkpoint as `alignkd eval` does? Question by question.

    python -m alignkd_harness.compare --task-dir runs/toy/lmms_task --samples runs/toy/lmms_out \\
        --predictions <model>/eval/predictions.jsonl

joins lmms-eval's logged samples (`--log_samples`; doc_id = line of the task's docs.jsonl) with
`alignkd eval`'s predictions.jsonl on the record id, and prints both exact matches and how many
questions got the same answer text and the same verdict. Exit code 1 when any differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def samples_file(path: Path) -> Path:
    """`path` itself, or the newest lmms-eval samples file (*_samples_*.jsonl) under it."""
    if path.is_file():
        return path
    found = sorted(path.rglob("*_samples_*.jsonl"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ValueError(f"{path}: no lmms-eval samples file (*_samples_*.jsonl); run lmms-eval with --log_samples")
    return found[-1]


def compare(docs: list[dict], samples: list[dict], predictions: list[dict]) -> dict:
    harness = {}
    for s in samples:
        doc = docs[int(s["doc_id"])]
        answer = s["filtered_resps"]
        answer = answer[0] if isinstance(answer, list) else answer
        harness[doc["id"]] = (str(answer), bool(s["exact_match"]))
    ours = {str(p["question_id"]): (p["prediction"], bool(p["correct"])) for p in predictions}
    missing = sorted(set(ours) ^ set(harness))
    if missing:
        raise ValueError(f"the two runs scored different questions ({len(missing)} not in both, e.g. {missing[:3]})")
    ids = sorted(ours)
    same_text = [i for i in ids if ours[i][0] == harness[i][0]]
    same_verdict = [i for i in ids if ours[i][1] == harness[i][1]]
    return {"n": len(ids), "harness_em": sum(harness[i][1] for i in ids) / len(ids),
            "alignkd_em": sum(ours[i][1] for i in ids) / len(ids),
            "same_answer": len(same_text), "same_verdict": len(same_verdict),
            "differ": [{"id": i, "harness": harness[i][0], "alignkd": ours[i][0]} for i in ids if i not in same_text]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m alignkd_harness.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--task-dir", required=True, help="the directory lmms_task wrote (its docs.jsonl)")
    ap.add_argument("--samples", required=True, help="lmms-eval's samples .jsonl, or its --output_path")
    ap.add_argument("--predictions", required=True, help="alignkd eval's predictions.jsonl")
    a = ap.parse_args(argv)
    try:
        r = compare(_jsonl(Path(a.task_dir) / "docs.jsonl"), _jsonl(samples_file(Path(a.samples))),
                    _jsonl(Path(a.predictions)))
    except (OSError, ValueError, KeyError, IndexError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{r['n']} questions: exact match lmms-eval {r['harness_em']:.4f}, alignkd eval {r['alignkd_em']:.4f}; "
          f"same answer text {r['same_answer']}/{r['n']}, same verdict {r['same_verdict']}/{r['n']}")
    for d in r["differ"][:10]:
        print(f"  {d['id']}: lmms-eval {d['harness']!r} vs alignkd eval {d['alignkd']!r}")
    return 0 if r["same_answer"] == r["n"] and r["same_verdict"] == r["n"] else 1


if __name__ == "__main__":
    sys.exit(main())
