"""A checkpoint directory laid out as the MobileVLM V2 releases ship theirs (mtgv/MobileVLM_V2-7B
and -1.7B), from a config and random weights:

* `config.json` with the released key set (transformers 4.33 names: `torch_dtype` "bfloat16",
  `max_sequence_length`, `rope_scaling` null, the `mm_*` and training flags), no key of ours
  (`mm_projector_grid` only when the grid is not the released 12);
* bf16 weights in `pytorch_model-0000i-of-0000n.bin` shards + `pytorch_model.bin.index.json`,
  under the released names, the CLIP tower inside (`model.vision_tower.vision_tower.vision_model.*`,
  with the `position_ids` buffer transformers 4.33 saved);
* the tokenizer as `tests.pipeline.release_tokenizer` writes it (`tokenizer.model`, no
  tokenizer.json); no safetensors, no `vision_tower/` directory.

    write_release_checkpoint(root / "MobileVLM_V2-7B", teacher_cfg, sp_model, seed=0)
    write_release_checkpoint(root / "MobileVLM_V2-1.7B", student_cfg, sp_model, seed=1,
                             tower_from=root / "MobileVLM_V2-7B")  # one frozen CLIP, as released

Import as `tests.pipeline.release_checkpoint`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.models import MobileVLM, MobileVLMConfig
from pipeline.models.checkpoint import (
    OURS_VISION,
    RELEASED_VISION,
    from_released,
    read_state_dict,
    to_released,
    write_state_dict,
)
from pipeline.models.config import DEFAULT_GRID, projector_grid
from tests.pipeline.release_tokenizer import write_release_tokenizer


def released_config(cfg: MobileVLMConfig) -> dict:
    """The config.json of a release for `cfg`'s shapes (the key set of MobileVLM V2's files)."""
    d = {
        "architectures": ["MobileLlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
        "freeze_mm_mlp_adapter": False, "hidden_act": cfg.hidden_act, "hidden_size": cfg.hidden_size,
        "image_aspect_ratio": "pad", "image_grid_pinpoints": None, "initializer_range": cfg.initializer_range,
        "intermediate_size": cfg.intermediate_size, "max_position_embeddings": cfg.max_position_embeddings,
        "max_sequence_length": cfg.max_position_embeddings, "mm_hidden_size": cfg.mm_hidden_size,
        "mm_projector_type": "ldpnetv2", "mm_use_im_patch_token": False, "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch", "mm_vision_select_layer": cfg.mm_vision_select_layer,
        "mm_vision_tower": cfg.mm_vision_tower, "model_type": "mobilevlm",
        "num_attention_heads": cfg.num_attention_heads, "num_hidden_layers": cfg.num_hidden_layers,
        "num_key_value_heads": cfg.num_key_value_heads, "pad_token_id": 0, "pretraining_tp": 1,
        "rms_norm_eps": cfg.rms_norm_eps, "rope_scaling": None, "rope_theta": 10000.0, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "transformers_version": "4.33.1", "tune_mm_mlp_adapter": False,
        "use_cache": True, "use_mm_proj": True, "vision_tower_type": "clip", "vocab_size": cfg.vocab_size,
    }
    if projector_grid(cfg) != DEFAULT_GRID:  # ours: only a non-released grid needs it
        d["mm_projector_grid"] = projector_grid(cfg)
    return d


def write_release_checkpoint(path: Path, cfg: MobileVLMConfig, sp_model: bytes, seed: int = 0,
                             tower_from: Path | None = None, shards: int = 2) -> Path:
    """Random weights of `cfg` under `seed` (the CLIP tower copied from the release `tower_from`),
    written as a release into `path` in `shards` bf16 .bin files."""
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in the released dtype: half the memory of an fp32 build
    try:
        model = MobileVLM(cfg)
    finally:
        torch.set_default_dtype(default)
    if tower_from is not None:
        sd = from_released(read_state_dict(tower_from))
        model.vision_tower.vision_tower.load_state_dict(
            {k[len(OURS_VISION):]: v for k, v in sd.items() if k.startswith(OURS_VISION)}, strict=True)
    sd = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in to_released(model.state_dict()).items()}
    del model
    # transformers 4.33's CLIP saved its position ids (a persistent buffer then): [1, patches + 1]
    n_pos = sd[RELEASED_VISION + "embeddings.position_embedding.weight"].shape[0]
    sd[RELEASED_VISION + "embeddings.position_ids"] = torch.arange(n_pos).unsqueeze(0)
    total = sum(v.numel() * v.element_size() for v in sd.values())
    write_state_dict(path, sd, safe_serialization=False, max_shard_size=total // shards + 1)
    (path / "config.json").write_text(json.dumps(released_config(cfg), indent=2, sort_keys=True) + "\n")
    write_release_tokenizer(path, sp_model)
    return path
