"""Paired bootstrap intervals for accuracy differences on one question set.

Two models answer the *same* held-out questions, so their difference is measured per question
(paired): resampling questions — and, with several training seeds, seeds too — gives the interval
of the mean difference without assuming independence between the two models' errors. With 350
questions one model's accuracy has ≈ ±2.5 points of standard error; pairing removes the part of
that variance both models share (easy and hard questions), which is what lets a ~2-point effect be
resolved with ≥ 200 questions per task type.

    a, b: [S, Q] 0/1 correctness (S runs, e.g. seeds; Q questions in one fixed order)
    paired_diff(a, b) -> {"diff": mean(a - b), "lo": 2.5 %, "hi": 97.5 %, "n_questions": Q, "n_runs": S}
"""

from __future__ import annotations

import numpy as np

N_BOOT = 2000


def paired_diff(a, b, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of a − b with a percentile bootstrap interval (questions resampled, and runs when S > 1;
    a hierarchical resample: each replicate draws S runs with replacement, then Q questions shared by
    the drawn runs, since every run answered the same questions)."""
    a, b = np.atleast_2d(np.asarray(a, dtype=np.float64)), np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape != b.shape:
        raise ValueError(f"paired_diff: shapes differ ({a.shape} vs {b.shape}): both sides must answer the same questions")
    d = a - b  # [S, Q]
    s, q = d.shape
    if q == 0:
        raise ValueError("paired_diff: no questions")
    rng = np.random.default_rng(seed)
    runs = rng.integers(0, s, size=(n_boot, s)) if s > 1 else np.zeros((n_boot, 1), dtype=np.int64)
    qs = rng.integers(0, q, size=(n_boot, q))
    per_q = d.mean(0) if s == 1 else None
    reps = np.empty(n_boot)
    for i in range(n_boot):
        reps[i] = (per_q[qs[i]] if per_q is not None else d[runs[i]][:, qs[i]]).mean()
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(reps, [tail, 100.0 - tail])
    return {"diff": round(float(d.mean()), 4), "lo": round(float(lo), 4), "hi": round(float(hi), 4),
            "n_questions": int(q), "n_runs": int(s)}


def fmt_diff(r: dict, scale: float = 100.0) -> str:
    """'+3.1 [+1.2, +5.0]' in points (the interval is the 95 % paired bootstrap)."""
    return f"{r['diff'] * scale:+.1f} [{r['lo'] * scale:+.1f}, {r['hi'] * scale:+.1f}]"


def correctness(predictions: list[dict], order: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """(question ids, [Q] 0/1) from predictions.jsonl rows (`question_id`, `correct`), in `order`
    when given (refusing a set that differs: a paired comparison needs the same questions)."""
    by_id = {p["question_id"]: bool(p["correct"]) for p in predictions}
    ids = order if order is not None else sorted(by_id)
    missing = [i for i in ids if i not in by_id]
    if missing or (order is not None and len(by_id) != len(order)):
        raise ValueError(f"the two prediction sets cover different questions ({len(missing)} of {len(ids)} missing, "
                         f"e.g. {missing[:3]}): evaluate both models on the same split and --limit")
    return ids, np.array([by_id[i] for i in ids], dtype=np.float64)
