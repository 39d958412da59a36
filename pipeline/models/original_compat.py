"""What an exported checkpoint needs so that the original MobileVLM code loads it too.

The original (Meituan-AutoML/MobileVLM, pinned to transformers 4.33.1 / tokenizers 0.13.3) loads a
checkpoint the way `scripts/inference.py` does (`load_pretrained_model`):

* `MobileLlamaForCausalLM.from_pretrained(dir)` builds the tower with
  `CLIPVisionModel.from_pretrained(config.mm_vision_tower)` and then
  `CLIPImageProcessor.from_pretrained(config.mm_vision_tower)`; the name is resolved against the
  *current working directory*, not the checkpoint. So a local tower must be a complete
  CLIPVisionModel directory (weights + config + preprocessor_config.json) named by an absolute path
  (`write_vision_tower_dir`, `point_vision_tower`);
* transformers 4.33 reads `rope_theta`, `torch_dtype` and an old-style `rope_scaling`
  (`{"type", "factor"}` or null), not transformers 5's `rope_parameters` / `dtype`
  (`legacy_config_keys` writes both spellings);
* `AutoTokenizer.from_pretrained(dir, use_fast=False)` needs a `tokenizer_class` that 4.33 knows
  and a tokenizer.json that tokenizers 0.13 parses (`write_compat_tokenizer`);
* its LDPv2 projector always pools to 12 x 12 = 144 tokens: a checkpoint with another
  `mm_projector_grid` loads there without error and silently computes something else
  (`grid_problem`, `warn_if_not_original`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig

from pipeline.models.config import DEFAULT_GRID, projector_grid

ORIGINAL_GRID = DEFAULT_GRID  # mobilevlm/model/vision_projector.py: TokenDownLayer((12, 12)), hardcoded
VISION_DIR = "vision_tower"
# the tokenizer class both transformers 4.33 and 5 map to "load tokenizer.json as it is"
# (4.33 has no TokenizersBackend; LlamaTokenizerFast would rebuild the pipeline in transformers 5)
COMPAT_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


class OriginalIncompatibleWarning(UserWarning):
    """A checkpoint that the original MobileVLM code would load but compute differently."""


def grid_problem(config) -> str | None:
    """Why the original MobileVLM code cannot run this config (None when it can)."""
    g = projector_grid(config)
    if g == ORIGINAL_GRID:
        return None
    return (f"mm_projector_grid={g} ({g * g} vision tokens): the original MobileVLM code always pools to "
            f"{ORIGINAL_GRID}x{ORIGINAL_GRID} = {ORIGINAL_GRID ** 2} tokens and ignores this key, so it would load "
            f"this checkpoint WITHOUT error and compute different logits and answers; only alignkd runs it "
            f"(for a checkpoint the original runs, build with 144 vision tokens, e.g. workflows/toy_144.yaml)")


def rope_problem(config) -> str | None:
    """transformers 4.33 knows RoPE scaling "linear" and "dynamic" only (and rejects others)."""
    kind = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if kind in ("default", "linear", "dynamic"):
        return None
    return f"rope_type={kind!r}: transformers 4.33 (the original's pin) has only linear and dynamic RoPE scaling"


def architecture_problems(config) -> list[str]:
    """What in the architecture the original MobileVLM code cannot run (empty when it can)."""
    return [p for p in (grid_problem(config), rope_problem(config)) if p]


def warn_if_not_original(config, where: str) -> list[str]:
    """Emit a loud OriginalIncompatibleWarning for `where` when the original cannot run it."""
    problems = architecture_problems(config)
    if problems:
        warnings.warn(f"NOT LOADABLE BY THE ORIGINAL MOBILEVLM CODE: {where}: {'; '.join(problems)}",
                      OriginalIncompatibleWarning, stacklevel=2)
    return problems


def checkpoint_problems(config, checkpoint: Path | None) -> list[str]:
    """Everything that keeps the original MobileVLM code from running `checkpoint` as alignkd does
    (`alignkd model info` prints them): the projector grid, and a local tower that is not a
    complete CLIPVisionModel dir named by an absolute path."""
    problems = architecture_problems(config)
    name = getattr(config, "mm_vision_tower", "")
    if checkpoint is None or name.startswith(("openai/", "laion/")):
        return problems
    tower = Path(name)
    if not tower.is_absolute():
        problems.append(f"mm_vision_tower={name!r} is relative: the original code resolves it against the current "
                        f"directory; re-export, or set it to the absolute path of the tower dir")
    else:
        missing = [f for f in ("config.json", "preprocessor_config.json") if not (tower / f).is_file()]
        if not any((tower / w).is_file() for w in ("model.safetensors", "pytorch_model.bin")):
            missing.append("model.safetensors")
        if missing:
            problems.append(f"mm_vision_tower={name!r} lacks {', '.join(missing)} (the original code loads the tower "
                            f"with CLIPVisionModel / CLIPImageProcessor.from_pretrained from it); if the checkpoint was "
                            f"moved, point the key at {Path(checkpoint).resolve() / VISION_DIR}")
    return problems


# ---------------------------------------------------------------------------- config.json
def legacy_config_keys(d: dict) -> dict:
    """`d` (a transformers-5 config dict) plus the key names transformers 4.33 reads."""
    out = dict(d)
    rp = out.get("rope_parameters") or {}
    theta = rp.get("rope_theta", out.get("rope_theta"))
    if theta is not None:
        out["rope_theta"] = theta
    kind = rp.get("rope_type", "default")
    if kind == "default":
        # absent = none in 4.33; a null key would make transformers 5 warn that rope_scaling is deprecated
        out.pop("rope_scaling", None)
    else:
        old = {"type": kind, "factor": rp.get("factor")}
        old.update({k: v for k, v in rp.items() if k not in ("rope_type", "rope_theta", "factor")})
        out["rope_scaling"] = old
    if "dtype" in out:
        out["torch_dtype"] = out["dtype"]
    return out


# ---------------------------------------------------------------------------- vision tower dir
def image_processor_config(vision: CLIPVisionConfig) -> dict:
    """preprocessor_config.json of the CLIPImageProcessor our `preprocess_image` equals
    (resize the shortest edge to S bicubic, centre-crop S, CLIP mean/std)."""
    from pipeline.models.image import CLIP_MEAN, CLIP_STD

    s = vision.image_size
    return {
        "crop_size": {"height": s, "width": s}, "do_center_crop": True, "do_convert_rgb": True,
        "do_normalize": True, "do_rescale": True, "do_resize": True, "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": list(CLIP_MEAN), "image_processor_type": "CLIPImageProcessor", "image_std": list(CLIP_STD),
        "resample": 3, "rescale_factor": 1 / 255, "size": {"shortest_edge": s},
    }


def write_vision_tower_dir(path: Path, vision: CLIPVisionConfig, tower_state: dict[str, torch.Tensor],
                           dtype: torch.dtype) -> Path:
    """A complete CLIPVisionModel directory: config.json, model.safetensors (keys
    `vision_model.*`, the name both transformers 4.33 and 5 load), preprocessor_config.json."""
    path.mkdir(parents=True, exist_ok=True)
    vc = vision.to_dict()  # the same bytes as presets.write_vision_tower: a shared tower's config stays one file's
    vc.pop("transformers_version", None)
    (path / "config.json").write_text(json.dumps(vc, indent=2, sort_keys=True) + "\n")
    sd = {("vision_model." + k if not k.startswith("vision_model.") else k): v.detach().to(dtype).contiguous().clone()
          for k, v in tower_state.items() if not k.endswith("position_ids")}
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "preprocessor_config.json").write_text(json.dumps(image_processor_config(vision), indent=2, sort_keys=True)
                                                   + "\n")
    return path


def point_vision_tower(checkpoint: Path, final: Path | None = None) -> None:
    """Set `mm_vision_tower` in `checkpoint/config.json` to the ABSOLUTE path of its own
    `vision_tower/` (when it has one). Why absolute: the original code passes the key straight to
    `CLIPVisionModel.from_pretrained`, which resolves a relative name against the cwd, so only an
    absolute path loads from any directory. Consequence: a checkpoint dir that is moved or copied
    must be re-exported, or this key edited (or this function run on the new dir), before the
    original code loads it; alignkd itself falls back to `<checkpoint>/vision_tower/`.
    The file is replaced, never edited in place (it may be a hard link shared with another dir).
    final: the dir `checkpoint` is about to be renamed to (the key names the tower there, so a kill
    between the rename and a later fix-up cannot leave it naming the temporary dir)."""
    checkpoint = Path(checkpoint)
    vdir = checkpoint / VISION_DIR
    f = checkpoint / "config.json"
    if not (vdir / "config.json").is_file():
        return
    d = json.loads(f.read_text())
    d["mm_vision_tower"] = str(((Path(final) if final is not None else checkpoint) / VISION_DIR).resolve())
    tmp = f.with_name("config.json.tmp")
    tmp.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
    tmp.replace(f)


# ---------------------------------------------------------------------------- tokenizer
def legacy_tokenizer_json(d: dict) -> dict | None:
    """tokenizer.json `d` in a form both tokenizers 0.13 (the original's pin) and 0.2x parse to the
    same tokenizer, or None when `d` uses something 0.13 cannot express.

    0.13 reads BPE merges only as "a b" strings (0.2x writes pairs; a piece holding a space has no
    string form), and Metaspace only with `add_prefix_space`; 0.2x insists that
    `add_prefix_space` agrees with its `prepend_scheme`, so both keys are written (0.13 ignores
    keys it does not know: `prepend_scheme`, `split`, `ignore_merges`)."""
    d = json.loads(json.dumps(d))  # deep copy
    model = d.get("model") or {}
    if model.get("type") == "BPE":
        pairs = [m if isinstance(m, list) else m.split(" ", 1) for m in model.get("merges") or []]
        if any(len(p) != 2 or " " in p[0] or " " in p[1] for p in pairs) or model.get("ignore_merges"):
            return None
        model["merges"] = [f"{a} {b}" for a, b in pairs]
    for node in _nodes(d.get("pre_tokenizer")) + _nodes(d.get("decoder")):
        if node.get("type") == "Metaspace":
            scheme = node.get("prepend_scheme", "always" if node.get("add_prefix_space", True) else "never")
            if scheme not in ("always", "never") or node.get("split", True) is False:
                return None  # 0.13 has no "first" scheme and always splits
            node["add_prefix_space"] = scheme == "always"
    return d


def _nodes(node) -> list[dict]:
    if not isinstance(node, dict):
        return []
    kids = node.get("pretokenizers") or node.get("decoders") or []
    return [node] + [n for k in kids for n in _nodes(k)]


def write_compat_tokenizer(dest: Path) -> list[str]:
    """Rewrite the tokenizer files in `dest` so transformers 4.33 + tokenizers 0.13 (the original's
    pins) read them as transformers 5 does; returns what was changed. A tokenizer.json the old
    format cannot express is left as it is (a warning says so)."""
    changed = []
    tj, tc = dest / "tokenizer.json", dest / "tokenizer_config.json"
    if tj.is_file():
        d = json.loads(tj.read_text())
        old = legacy_tokenizer_json(d)
        if old is None:
            warnings.warn(f"{tj}: uses a tokenizers feature with no tokenizers-0.13 form; the original MobileVLM "
                          f"code (tokenizers 0.13.3) cannot read it", OriginalIncompatibleWarning, stacklevel=2)
        elif old != d:
            _replace_text(tj, json.dumps(old, ensure_ascii=False, indent=2) + "\n")
            changed.append("tokenizer.json")
    if tc.is_file():
        c = json.loads(tc.read_text())
        if c.get("tokenizer_class") in (None, "TokenizersBackend") and tj.is_file():
            c["tokenizer_class"] = COMPAT_TOKENIZER_CLASS
            _replace_text(tc, json.dumps(c, indent=2, sort_keys=True) + "\n")
            changed.append("tokenizer_config.json")
    return changed


def _replace_text(f: Path, text: str) -> None:
    tmp = f.with_name(f.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(f)  # a new inode: a hard-linked copy elsewhere keeps its bytes
