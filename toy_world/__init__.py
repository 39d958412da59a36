"""The embedded toy world: generated shape images, LLaVA-format caption/QA data with a held-out
eval split, a locally trained tokenizer and tiny MobileVLM teacher/student inits.

    from toy_world import build_world
    meta = build_world(load_workflow("workflows/toy.yaml"))      # what `alignkd toy world` runs

Modules: scenes (ground truth), render (PIL), tasks (QA per task type), records (LLaVA records,
Short/Long fitting), generate (the world's content), assets (tokenizer, lengths, models),
stats, world (writing, idempotency; the sizing rationale is in its docstring), tokenizer (the
local BPE trainer), presets (toy and real-shape model configs, random checkpoints).
"""

from __future__ import annotations

import importlib
from typing import Any

# Public names, imported on first use (PEP 562): `toy_world.world` pulls in torch and transformers
# (~4 s), and every `alignkd` command imports `toy_world.cli` through this package.
_LAZY = {"GENERATOR_VERSION": "toy_world.generate", "WorldError": "toy_world.generate",
         "WorldSpec": "toy_world.generate", "WORLD_JSON": "toy_world.world", "build_world": "toy_world.world",
         "existing_state": "toy_world.world"}

__all__ = ["GENERATOR_VERSION", "WORLD_JSON", "WorldError", "WorldSpec", "build_world", "existing_state"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'toy_world' has no attribute {name!r}")
