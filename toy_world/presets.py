"""Configs of the released MobileVLM V2 models (shapes only) and of the toy world's tiny ones.

All of them build through the same `MobileVLM(config)` path. Never instantiate the real ones in
tests (1.7B / 7B parameters); use them for dry-runs (`alignkd model info preset:mobilevlm_v2_7b`).
They live with the toy world, not in `pipeline`: neither phase builds a model from a preset — only
the toy world, the dry runs, the benchmarks and the tests do.

    vt = write_vision_tower(runs / "clip_toy")              # dir with a tiny CLIP vision config
    write_random_checkpoint(runs / "teacher", toy_teacher_config(vocab, vt), seed=0)
    write_random_checkpoint(runs / "student", toy_student_config(vocab, vt), seed=1,
                            vision_tower_from=runs / "teacher")   # teacher and student share CLIP
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import CLIPVisionConfig

from pipeline.models.checkpoint import OURS_VISION, from_released, read_state_dict
from pipeline.models.config import CLIP_L14_336, MobileVLMConfig

_TOKENS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _mm_keys(vision_tower: str, mm_hidden: int, grid: int | None) -> dict:
    d = dict(
        mm_projector_type="ldpnetv2",
        mm_hidden_size=mm_hidden,
        mm_vision_tower=vision_tower,
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        image_aspect_ratio="pad",
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        vision_tower_type="clip",
        use_mm_proj=True,
        architectures=["MobileLlamaForCausalLM"],
    )
    if grid is not None:
        d["mm_projector_grid"] = grid
    return d


def _llama(layers: int, hidden: int, heads: int, ffn: int, rms: float, vocab: int, max_pos: int, **kw) -> MobileVLMConfig:
    return MobileVLMConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, hidden_act="silu", rms_norm_eps=rms,
        max_position_embeddings=max_pos, initializer_range=0.02, tie_word_embeddings=False,
        rope_theta=10000.0, attention_bias=False, use_cache=True, **_TOKENS, **kw,
    )


def mobilevlm_v2_1_7b_config() -> MobileVLMConfig:
    """Student: MobileLLaMA 1.4B (24 x 2048, 16 heads, ffn 5632) + CLIP-L/14-336, 144 tokens."""
    return _llama(24, 2048, 16, 5632, 1e-6, 32000, 2048, **_mm_keys(CLIP_L14_336, 1024, None))


def mobilevlm_v2_7b_config() -> MobileVLMConfig:
    """Teacher: Vicuna 7B (32 x 4096, 32 heads, ffn 11008) + CLIP-L/14-336, 144 tokens."""
    return _llama(32, 4096, 32, 11008, 1e-5, 32000, 4096, **_mm_keys(CLIP_L14_336, 1024, None))


def toy_vision_config() -> CLIPVisionConfig:
    """A tiny CLIP ViT: 64 px images, 4 px patches -> 16 x 16 patches, hidden 64, 2 layers."""
    return CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, projection_dim=64, num_hidden_layers=2, num_attention_heads=4,
        num_channels=3, image_size=64, patch_size=4, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )


def write_vision_tower(path: str | Path, vision_config: CLIPVisionConfig | None = None) -> Path:
    """Write a CLIP vision config.json into `path` (a local `mm_vision_tower` directory)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    d = (vision_config or toy_vision_config()).to_dict()
    d.pop("transformers_version", None)
    (path / "config.json").write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
    return path.resolve()


def _tower_arg(vision_tower_dir: str | Path) -> tuple[str, int]:
    from pipeline.models.config import read_vision_config

    p = Path(vision_tower_dir).resolve()
    return str(p), read_vision_config(str(p / "config.json")).hidden_size


def toy_teacher_config(vocab_size: int, vision_tower_dir: str | Path, grid: int = 8) -> MobileVLMConfig:
    """Toy teacher: 4 layers x 256 hidden x 8 heads, ffn 688, grid G -> G*G vision tokens (toy world: 4 -> 16)."""
    tower, mm_hidden = _tower_arg(vision_tower_dir)
    return _llama(4, 256, 8, 688, 1e-5, vocab_size, 2048, **_mm_keys(tower, mm_hidden, grid))


def toy_student_config(vocab_size: int, vision_tower_dir: str | Path, grid: int = 8) -> MobileVLMConfig:
    """Toy student: 2 layers x 128 hidden x 4 heads, ffn 344, grid G -> G*G vision tokens (toy world: 4 -> 16)."""
    tower, mm_hidden = _tower_arg(vision_tower_dir)
    return _llama(2, 128, 4, 344, 1e-6, vocab_size, 2048, **_mm_keys(tower, mm_hidden, grid))


def write_random_checkpoint(path: str | Path, config: MobileVLMConfig, seed: int = 0,
                            vision_tower_from: str | Path | None = None,
                            dtype: "torch.dtype | str | None" = None,
                            vision_tower_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Randomly initialise a MobileVLM from `config` under `seed` and save it to `path`.

    vision_tower_from: a checkpoint dir whose CLIP weights are copied in (teacher and student
    share the frozen tower in reality; the tower configs must match).
    vision_tower_state: CLIPVisionModel weights to load instead (e.g. the toy world's pre-trained
    tower, `toy_world.tower`)."""
    from pipeline.models.mobilevlm import MobileVLM

    torch.manual_seed(seed)
    model = MobileVLM(config)
    if vision_tower_from is not None:
        sd = from_released(read_state_dict(vision_tower_from))
        tower = {k[len(OURS_VISION):]: v for k, v in sd.items() if k.startswith(OURS_VISION)}
        model.vision_tower.vision_tower.load_state_dict(tower, strict=True)
    elif vision_tower_state is not None:
        model.vision_tower.vision_tower.load_state_dict(vision_tower_state, strict=True)
    # relative tower name: a random init's bytes do not depend on where it was written (the toy world hashes them)
    return model.save_pretrained(path, dtype=dtype, absolute_tower=False)
