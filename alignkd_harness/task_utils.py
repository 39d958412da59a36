"""The functions of the local lmms-eval task written by lmms_task.py (its utils.py re-exports
them): a document is one held-out record flattened to {id, task, question, answer, image}, the
image an absolute path ("" for a text-only record)."""

from __future__ import annotations

from PIL import Image

from evaluation.heldout import normalise


def doc_to_visual(doc: dict) -> list:
    if not doc["image"]:
        return []
    with Image.open(doc["image"]) as im:
        return [im.convert("RGB")]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    # the record's human turn verbatim ("<image>\n..." included): the model class renders it with
    # the v1 template exactly as `alignkd eval` renders the record
    return doc["question"]


def doc_to_target(doc: dict) -> str:
    return doc["answer"]


def process_results(doc: dict, results: list[str]) -> dict:
    """`alignkd eval`'s exact match (evaluation.heldout.normalise: case, surrounding space and
    trailing punctuation), overall and for the record's task type."""
    correct = float(normalise(results[0]) == normalise(doc["answer"]))
    return {"exact_match": correct, f"exact_match_{doc['task']}": correct}
