"""Helpers of the teacher_dump tests: workflow files over one tiny toy world, store comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from cache_schema import CacheReader

REPO = Path(__file__).resolve().parents[2]
ALIGNKD = REPO / ".venv" / "bin" / "alignkd"

# a world small enough for 2 shared cores: ~20 short samples, ~12 images, one text-only sample
WORLD = dict(seed=0, tower_steps=0, image_size=64, n_images=12, n_eval_images=2, n_pretrain=8, n_finetune=16, n_eval=2,
             tokenizer_vocab=300)
DUMP = dict(workers=2, batch_size=4, unit_size=4, max_retries=2)


def workflow(root: Path, name: str, world: Path, manifest: Path | None = None, cache: dict | None = None,
             dump: dict | None = None) -> Path:
    """Write `root/name.yaml`: the tiny world's data/models, its own cache dir unless `cache` says."""
    d = {
        "name": name,
        "run_dir": str(root / name),
        "world": {"dir": str(world), **WORLD},
        "data": {
            "datasets": [
                {"name": "cap", "json": str(world / "data/pretrain.json"), "image_root": str(world / "images"),
                 "template": "plain", "stage": "pretrain"},
                {"name": "qa", "json": str(world / "data/finetune.json"), "image_root": str(world / "images"),
                 "template": "v1", "stage": "finetune"},
            ],
            "tokenizer": str(world / "tokenizer"),
            "manifest": str(manifest or root / "manifest.parquet"),
            "rejects": str(root / "rejects.jsonl"),
            "subsets": {"short": 160, "long": 320},
            "num_workers": 0,
        },
        "models": {"teacher": str(world / "teacher_init"), "student": str(world / "student_init"), "num_vision_tokens": 64},
        "cache": {"dir": str(root / name / "cache"), "logits_topk": 16, "focus_k": 8, **(cache or {})},
        "dump": {**DUMP, **(dump or {})},
    }
    p = root / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def assert_stores_equal(a: Path, b: Path) -> None:
    """Same samples and images, every array bit-identical (the units may be cut differently)."""
    ra, rb = CacheReader(a), CacheReader(b)
    assert ra.sample_ids == rb.sample_ids
    for sid in ra.sample_ids:
        x, y = ra.get(sid), rb.get(sid)
        assert (x.token_hash, x.image_hash, x.n_text) == (y.token_hash, y.image_hash, y.n_text), sid
        assert x.attn.keys() == y.attn.keys(), sid
        for k in x.attn:
            np.testing.assert_array_equal(x.attn[k], y.attn[k], err_msg=f"{sid} attn {k}")
        for f in ("focus", "topk_ids", "topk_logprobs", "tail_logmass"):
            np.testing.assert_array_equal(getattr(x, f), getattr(y, f), err_msg=f"{sid} {f}")
        if x.image_hash and ra.provenance.projector_tokens == "stored":
            np.testing.assert_array_equal(ra.image_tokens(x.image_hash), rb.image_tokens(x.image_hash), err_msg=sid)
    assert ra.provenance.projector_tokens == rb.provenance.projector_tokens
    pa, pb = ra.teacher_projector(), rb.teacher_projector()
    assert pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)
