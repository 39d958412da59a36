"""MobileVLM V2 configuration: a LLaMA config plus the `mm_*` keys of the released checkpoints.

A checkpoint's config.json looks like the released ones (`model_type "mobilevlm"`,
`architectures ["MobileLlamaForCausalLM"]`, `mm_projector_type "ldpnetv2"`, ...). The vision tower
is named by `mm_vision_tower`, in one of two forms:

* the released name `openai/clip-vit-large-patch14-336`: its architecture is hardcoded below (its
  weights come from the MobileVLM checkpoint itself, nothing is downloaded);
* a local directory holding a CLIP config.json (a `CLIPVisionConfig`, or a `CLIPConfig` with a
  `vision_config`); a relative path is resolved against the checkpoint directory
  (`config.name_or_path`, set by `load_config` / `MobileVLM.from_pretrained`). Exports name their
  own `vision_tower/` by absolute path (the original MobileVLM code resolves against the cwd:
  original_compat.py); when that path is gone (the dir was moved), `<checkpoint>/vision_tower/`
  is used.

One key is ours: `mm_projector_grid` (default 12, the released value), the side G of the pooled
patch grid, so the projector emits G*G tokens (toy models use 8). The original code ignores it and
always pools to 12: other grids run in alignkd only (original_compat.grid_problem).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from transformers import AutoConfig, CLIPConfig, CLIPVisionConfig, LlamaConfig

CLIP_L14_336 = "openai/clip-vit-large-patch14-336"
DEFAULT_GRID = 12  # LDPv2 pools the 24x24 patch grid of CLIP-L/14-336 to 12x12 = 144 tokens


class ModelConfigError(ValueError):
    """A MobileVLM config that this package cannot build (the message names the key and the fix)."""


class MobileVLMConfig(LlamaConfig):
    """LlamaConfig under the released model_type; unknown keys (the mm_* ones) ride along."""

    model_type = "mobilevlm"


# AutoConfig (used by AutoTokenizer and CLIPImageProcessor on a checkpoint dir) then knows the
# type instead of warning "You are using a model of type mobilevlm to instantiate a model of type"
try:
    AutoConfig.register("mobilevlm", MobileVLMConfig)
except ValueError:  # already registered (e.g. by the original MobileVLM code in the same process)
    pass

def clip_vit_l14_336_config() -> CLIPVisionConfig:
    """Architecture of `openai/clip-vit-large-patch14-336`'s vision half (ViT-L/14 at 336 px)."""
    return CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        projection_dim=768,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_channels=3,
        image_size=336,
        patch_size=14,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
        initializer_range=0.02,
        initializer_factor=1.0,
    )


def load_config(path: str | Path) -> MobileVLMConfig:
    """Read `path/config.json` (or a config.json path) and validate the MobileVLM keys."""
    p = Path(path)
    f = p / "config.json" if p.is_dir() else p
    if not f.is_file():
        raise ModelConfigError(f"no config.json at {p}: point at a MobileVLM checkpoint directory")
    d = json.loads(f.read_text())
    d.pop("transformers_version", None)
    cfg = MobileVLMConfig.from_dict(d)
    cfg.name_or_path = str(f.parent.resolve())
    validate_config(cfg)
    return cfg


def validate_config(cfg: LlamaConfig) -> None:
    """Check the mm_* keys this implementation supports; every problem is reported at once."""
    problems = []

    def want(key: str, ok, expect: str) -> None:
        val = getattr(cfg, key, None)
        if not ok(val):
            problems.append(f"{key}={val!r} (expected {expect})")

    want("mm_projector_type", lambda v: v == "ldpnetv2", '"ldpnetv2"')
    want("mm_hidden_size", lambda v: isinstance(v, int) and v > 0, "the vision tower's hidden size, an int")
    want("mm_vision_tower", lambda v: isinstance(v, str) and v, f'"{CLIP_L14_336}" or a local CLIP config dir')
    want("mm_vision_select_layer", lambda v: isinstance(v, int), "an int, -2 in the released models")
    want("mm_vision_select_feature", lambda v: v in (None, "patch"), '"patch" (CLS dropped)')
    want("mm_use_im_start_end", lambda v: not v, "false")
    want("mm_projector_grid", lambda v: v is None or (isinstance(v, int) and v > 0), "a positive int (default 12)")
    if problems:
        raise ModelConfigError("unsupported MobileVLM config: " + "; ".join(problems))


def projector_grid(cfg: LlamaConfig) -> int:
    """Side G of the pooled grid; the projector emits G*G vision tokens."""
    return int(getattr(cfg, "mm_projector_grid", None) or DEFAULT_GRID)


def vision_tower_dir(cfg: LlamaConfig) -> Path | None:
    """The local directory named by `mm_vision_tower`, or None for the released CLIP name."""
    name = cfg.mm_vision_tower
    if name == CLIP_L14_336:
        return None
    forms = (f'accepted are the released name "{CLIP_L14_336}" or a local directory holding a CLIP vision '
             f"config.json (a relative path resolves against the checkpoint directory)")
    p = Path(name)
    base = getattr(cfg, "name_or_path", "") or ""
    own = Path(base) / "vision_tower" if base else None
    if p.is_absolute() and not (p / "config.json").is_file() and own is not None and (own / "config.json").is_file():
        # an exported checkpoint names its own tower by absolute path (for the original code, see
        # original_compat.point_vision_tower); after the dir was moved, its own copy is the one meant
        return own.resolve()
    if not p.is_absolute():
        if not base or not Path(base).is_dir():
            raise ModelConfigError(
                f"unknown mm_vision_tower={name!r}: it is not the released name and, as a relative path, there is "
                f"no checkpoint directory to resolve it against (load with load_config(dir) / "
                f"MobileVLM.from_pretrained(dir), or give an absolute path); {forms}"
            )
        p = Path(base) / p
    if not (p / "config.json").is_file():
        raise ModelConfigError(f"unknown mm_vision_tower={name!r} (no {p / 'config.json'}): {forms}")
    return p.resolve()


def resolve_vision_config(cfg: LlamaConfig) -> CLIPVisionConfig:
    """The CLIPVisionConfig of the tower named by `cfg.mm_vision_tower` (see the module docstring)."""
    d = vision_tower_dir(cfg)
    vc = clip_vit_l14_336_config() if d is None else read_vision_config(str(d / "config.json"))
    if vc.hidden_size != cfg.mm_hidden_size:
        raise ModelConfigError(
            f"mm_hidden_size={cfg.mm_hidden_size} but the vision tower {cfg.mm_vision_tower!r} has hidden "
            f"size {vc.hidden_size}: set mm_hidden_size to {vc.hidden_size}"
        )
    return vc


@functools.lru_cache(maxsize=32)
def _read_json(path: str, mtime_ns: int) -> str:
    return Path(path).read_text()  # cached: preprocess_image resolves the tower once per image


def read_vision_config(path: str) -> CLIPVisionConfig:
    # a fresh object each time: transformers mutates configs it builds models from
    d = json.loads(_read_json(path, Path(path).stat().st_mtime_ns))
    d.pop("transformers_version", None)
    if d.get("model_type") == "clip" or "vision_config" in d:
        return CLIPConfig.from_dict(d).vision_config
    if d.get("model_type") not in (None, "clip_vision_model"):
        raise ModelConfigError(f"{path} holds model_type={d.get('model_type')!r}, not a CLIP (vision) config")
    return CLIPVisionConfig.from_dict(d)
