"""The embedded toy world: generated shape images, LLaVA-format caption/QA data with a held-out
eval split, a locally trained tokenizer and tiny MobileVLM teacher/student inits.

    from toy_world import build_world
    meta = build_world(load_workflow("workflows/toy.yaml"))      # what `alignkd toy world` runs

Modules: scenes (ground truth), render (PIL), tasks (QA per task type), records (LLaVA records,
Short/Long fitting), generate (the world's content), assets (tokenizer, lengths, models),
stats, world (writing, idempotency; the sizing rationale is in its docstring), tokenizer (the
local BPE trainer), presets (toy and real-shape model configs, random checkpoints).
"""

from toy_world.generate import GENERATOR_VERSION, WorldError, WorldSpec
from toy_world.world import WORLD_JSON, build_world, existing_state

__all__ = ["GENERATOR_VERSION", "WORLD_JSON", "WorldError", "WorldSpec", "build_world", "existing_state"]
