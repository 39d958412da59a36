"""MobileVLM V2 family: LLaMA LLM + frozen CLIP tower + LDPv2 projector, checkpoint I/O in the
original MobileVLM layout, image preprocessing, and first/last-layer attention capture.

Public API (docs/CONTRACTS.md):

    model = MobileVLM.from_pretrained(path, dtype=torch.float32)
    model.save_pretrained(path, dtype=None)
    out = model(input_ids=ids, images=px, attention_mask=am, labels=None)      # out.logits [B, L_emb, V]
    al = model.forward_align(input_ids=ids, images=px, attention_mask=am, labels=lab,
                             spec=CaptureSpec(layers=("first",), blocks=("tv",)))
    gen = model.generate(input_ids=prompt_ids, images=px, attention_mask=am, max_new_tokens=16)
    px = preprocess_image(pil_image, model.config)                             # [3, S, S] float32

Toy and real-shape configs (outside the core: only the toy world, dry runs and benchmarks use them):
`toy_world.presets`. What makes a saved checkpoint loadable by
the original MobileVLM code too (transformers 4.33): `pipeline.models.original_compat`.
"""

from pipeline.models.capture import AlignOutput, CaptureSpec
from pipeline.models.checkpoint import CheckpointError
from pipeline.models.config import (
    CLIP_L14_336,
    MobileVLMConfig,
    ModelConfigError,
    load_config,
    resolve_vision_config,
)
from pipeline.models.image import preprocess_image
from pipeline.models.mobilevlm import MobileVLM, MobileVLMOutput

__all__ = [
    "AlignOutput",
    "CLIP_L14_336",
    "CaptureSpec",
    "CheckpointError",
    "MobileVLM",
    "MobileVLMConfig",
    "MobileVLMOutput",
    "ModelConfigError",
    "load_config",
    "preprocess_image",
    "resolve_vision_config",
]
