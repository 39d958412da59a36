"""Statistics of a generated world (stored in world.json, printed by `alignkd toy world`)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from toy_world import assets
from toy_world.generate import WorldSpec
from toy_world.records import Draft, one_word_pairs
from toy_world.scenes import Scene


def world_stats(spec: WorldSpec, train: list[Scene], pretrain: list[dict], finetune: list[dict],
                evals: list[dict], drafts: list[Draft], tok: Any) -> dict:
    n_turns = [len(r["conversations"]) // 2 for r in finetune]
    kept_tasks = Counter(t for d, k in zip(drafts, n_turns) for t in d.tasks[:k])
    return {
        "counts": {
            "train_images": len(train),
            "eval_images": spec.n_eval_images,
            "pretrain": len(pretrain),
            "finetune": len(finetune),
            "eval": len(evals),
            "tokenizer_vocab": len(tok),
        },
        "finetune_kinds": dict(sorted(Counter(d.kind for d in drafts).items())),
        "finetune_turns": dict(sorted(Counter(n_turns).items())),
        "finetune_tasks": dict(sorted(kept_tasks.items())),
        "eval_tasks": dict(sorted(Counter(r["task"] for r in evals).items())),
        "image_uses": image_uses(train, pretrain + finetune),
        "lengths": {
            "pretrain": subset_lengths(pretrain, "plain", tok, spec),
            "finetune": subset_lengths(finetune, "v1", tok, spec),
            "eval": subset_lengths(evals, "v1", tok, spec),
        },
        "blind_accuracy": blind_accuracy(finetune, evals),
    }


def image_uses(train: list[Scene], records: list[dict]) -> dict:
    uses = Counter(r["image"] for r in records if "image" in r)
    per = [uses.get(s.image, 0) for s in train]
    return {
        "used": sum(u > 0 for u in per),
        "used_once": sum(u == 1 for u in per),
        "used_several": sum(u > 1 for u in per),
        "max_uses": max(per, default=0),
    }


def subset_lengths(records: list[dict], template: str, tok: Any, spec: WorldSpec) -> dict:
    """Embedded lengths and subset membership, as the manifest will compute them."""
    convs = [(r["conversations"], template, "image" in r) for r in records]
    lens = np.array(assets.embedded_lengths(convs, tok, spec.num_vision_tokens))
    return {
        "min": int(lens.min()),
        "median": int(np.median(lens)),
        "max": int(lens.max()),
        "short": int((lens <= spec.short_limit).sum()),
        "long": int((lens <= spec.long_limit).sum()),
        "long_only": int(((lens > spec.short_limit) & (lens <= spec.long_limit)).sum()),
        "over_long": int((lens > spec.long_limit).sum()),
    }


def blind_accuracy(finetune: list[dict], evals: list[dict]) -> dict:
    """Eval accuracy of the best image-blind guesser we can build: the most frequent fine-tuning
    answer to the exact same question text, else (in the guesser's favour) the most frequent eval
    answer of the task. A generous ceiling: an image-blind model trained on the data cannot do
    better on average."""
    by_q: dict[str, Counter] = {}
    for q, a in one_word_pairs(finetune):
        by_q.setdefault(q, Counter())[a] += 1
    by_task: dict[str, Counter] = {}
    for r in evals:
        by_task.setdefault(r["task"], Counter())[r["answer"]] += 1
    hits: dict[str, list[bool]] = {}
    for r, (q, _) in zip(evals, one_word_pairs(evals)):
        guess = (by_q.get(q) or by_task[r["task"]]).most_common(1)[0][0]
        hits.setdefault(r["task"], []).append(guess == r["answer"])
    per = {t: round(float(np.mean(h)), 3) for t, h in sorted(hits.items())}
    allh = [x for h in hits.values() for x in h]
    return {"overall": round(float(np.mean(allh)), 3) if allh else 0.0, "per_task": per}
