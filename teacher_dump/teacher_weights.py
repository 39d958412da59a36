"""The teacher weights a cache v2 store keeps once, read alone from the teacher's checkpoint (the
dump's driver creates the store with them; an actor does when it finds no store)."""

from __future__ import annotations

import json
from pathlib import Path


def teacher_projector(teacher_dir: Path) -> dict:
    """The teacher's projector weights (name → float32 numpy), read alone from its checkpoint: kept
    once in a new store so a student with the same tower can rebuild the projector tokens."""
    from pipeline.models.checkpoint import read_tensors

    prefix = "model.mm_projector."
    return {k[len(prefix):]: v.float().numpy() for k, v in read_tensors(teacher_dir, lambda k: k.startswith(prefix)).items()}


FIRST_LAYER_KEYS = {"model.embed_tokens.weight": "embed_tokens.weight",
                    "model.layers.0.input_layernorm.weight": "input_layernorm.weight",
                    "model.layers.0.self_attn.q_proj.weight": "q_proj.weight",
                    "model.layers.0.self_attn.q_proj.bias": "q_proj.bias",
                    "model.layers.0.self_attn.k_proj.weight": "k_proj.weight",
                    "model.layers.0.self_attn.k_proj.bias": "k_proj.bias"}


def teacher_first_layer(teacher_dir: Path) -> tuple[dict, dict]:
    """(the tensors layer 0's attention probabilities depend on, config.json): the embedding rows,
    layer 0's input norm and q/k projections (≈ 165 M parameters for the 7B, read alone), kept once
    in an attention-recompute store (student_train.teacher_projector.TeacherFirstLayer)."""
    got = read_first_layer_tensors(teacher_dir)
    return got, json.loads((Path(teacher_dir) / "config.json").read_text())


def read_first_layer_tensors(teacher_dir: Path) -> dict:
    from pipeline.models.checkpoint import read_tensors

    t = read_tensors(teacher_dir, lambda k: k in FIRST_LAYER_KEYS)
    return {FIRST_LAYER_KEYS[k]: v.float().numpy() for k, v in t.items()}


def create_or_open_store(path: Path, prov, teacher_dir: Path):
    """The store at `path` (cache_schema.CacheStore), created with the teacher weights its
    provenance needs when it does not exist yet (they are read only then)."""
    from cache_schema import CacheStore
    from cache_schema.create import store_state

    if store_state(path) == "store":
        return CacheStore.create_or_open(path, prov)
    first = teacher_first_layer(teacher_dir) if prov.attention == "recompute" else None
    return CacheStore.create_or_open(path, prov, projector=teacher_projector(teacher_dir), first_layer=first)
