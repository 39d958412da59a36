"""Weights on disk in the original MobileVLM layout.

Keys: `model.embed_tokens.*`, `model.layers.N.*`, `model.norm.weight`, `lm_head.weight`,
`model.vision_tower.vision_tower.vision_model.*`, `model.mm_projector.mlp.mlp.{0,2}.*`,
`model.mm_projector.peg.peg.0.*`. Our module tree mirrors it except for the CLIP tower, which we
keep at `vision_tower.vision_tower.*` (see mobilevlm.py for why) and whose transformers >= 5
CLIPVisionModel has no `vision_model.` level: `to_released` / `from_released` map it both ways.

Files: `model.safetensors` or `pytorch_model.bin`, or shards named by
`model.safetensors.index.json` / `pytorch_model.bin.index.json` (HF index format).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

OURS_VISION = "vision_tower.vision_tower."
RELEASED_VISION = "model.vision_tower.vision_tower.vision_model."
_NO_PREFIX_VISION = "model.vision_tower.vision_tower."  # released path without CLIP's vision_model level
# Deterministic buffers some older checkpoints carry; we rebuild them, so they are dropped on load.
_IGNORABLE = (re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$"),
              re.compile(r"^vision_tower\.vision_tower\.embeddings\.position_ids$"))
SAFE_SINGLE, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN_SINGLE, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


class CheckpointError(ValueError):
    """A checkpoint that does not match the model (the message lists the keys / files)."""


def as_dtype(dtype: "torch.dtype | str | None") -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use one of {sorted(DTYPES)} or a torch.dtype")
    return DTYPES[dtype]


def to_released(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state-dict keys -> the released names (adds CLIP's `vision_model.` level)."""
    return {(RELEASED_VISION + k[len(OURS_VISION):] if k.startswith(OURS_VISION) else k): v for k, v in sd.items()}


def from_released(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released names (or transformers >= 5 names without `vision_model.`) -> ours; drops the
    ignorable rebuilt buffers."""
    out = {}
    for k, v in sd.items():
        if k.startswith(RELEASED_VISION):
            k = OURS_VISION + k[len(RELEASED_VISION):]
        elif k.startswith(_NO_PREFIX_VISION):
            k = OURS_VISION + k[len(_NO_PREFIX_VISION):]
        if not any(p.match(k) for p in _IGNORABLE):
            out[k] = v
    return out


def check_keys(expected: set[str], got: set[str], where: str) -> None:
    """Strict key check; the error lists every missing and unexpected key (released names)."""
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        rel = lambda ks: [next(iter(to_released({k: None}))) for k in ks]
        raise CheckpointError(
            f"checkpoint {where} does not match the model config: "
            f"{len(missing)} missing key(s) {rel(missing)}; {len(unexpected)} unexpected key(s) {rel(unexpected)}. "
            f"Check that config.json belongs to these weights (layers, projector type, vision tower)."
        )


def weight_files(path: Path) -> list[Path]:
    """The weight files of a checkpoint dir, preferring safetensors; sharded via the index."""
    for single, index in ((SAFE_SINGLE, SAFE_INDEX), (BIN_SINGLE, BIN_INDEX)):
        if (path / index).is_file():
            shards = sorted(set(json.loads((path / index).read_text())["weight_map"].values()))
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                raise CheckpointError(f"{path / index} names shard(s) that are absent: {missing}")
            return [path / s for s in shards]
        if (path / single).is_file():
            return [path / single]
    raise CheckpointError(
        f"no weights in {path}: expected {SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE} or {BIN_INDEX}"
    )


def read_state_dict(path: str | Path, device: "torch.device | str" = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint dir, under the names stored in the files."""
    sd: dict[str, torch.Tensor] = {}
    for f in weight_files(Path(path)):
        if f.suffix == ".safetensors":
            with safe_open(str(f), framework="pt", device=str(device)) as fh:
                part = {k: fh.get_tensor(k) for k in fh.keys()}
        else:
            part = torch.load(f, map_location=device, weights_only=True, mmap=True)
        dup = sd.keys() & part.keys()
        if dup:
            raise CheckpointError(f"{f} repeats keys already read from another shard: {sorted(dup)[:5]}")
        sd.update(part)
    return sd


def read_tensors(path: str | Path, keep: "Callable[[str], bool]") -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint dir whose *our-layout* name (after `from_released`) passes
    `keep`, under our names. Reads only those: safetensors by key, .bin through mmap (a 7B
    checkpoint's ~0.6 GB tower or ~84 MB projector, not its 14 GB)."""
    out: dict[str, torch.Tensor] = {}
    for f in weight_files(Path(path)):
        if f.suffix == ".safetensors":
            with safe_open(str(f), framework="pt", device="cpu") as fh:
                names = {k: next(iter(from_released({k: None})), None) for k in fh.keys()}
                part = {ours: fh.get_tensor(k) for k, ours in names.items() if ours is not None and keep(ours)}
        else:
            part = {k: v for k, v in from_released(torch.load(f, map_location="cpu", weights_only=True,
                                                              mmap=True)).items() if keep(k)}
        out.update({k: v.clone() for k, v in part.items()})  # detach from the mmap before it closes
    return out


def _parse_size(size: "int | str | None") -> int | None:
    if size is None or isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)\s*", size.upper())
    if not m:
        raise ValueError(f"max_shard_size {size!r}: give bytes (int) or e.g. '5GB', '200MB'")
    return int(float(m.group(1)) * {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[m.group(2)])


def write_state_dict(path: str | Path, sd: dict[str, torch.Tensor], safe_serialization: bool = True,
                     max_shard_size: "int | str | None" = None) -> list[Path]:
    """Write `sd` (already under the released names) into `path`, sharded above `max_shard_size`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for stale in (SAFE_SINGLE, SAFE_INDEX, BIN_SINGLE, BIN_INDEX):
        (path / stale).unlink(missing_ok=True)
    for stale in list(path.glob("model-*-of-*.safetensors")) + list(path.glob("pytorch_model-*-of-*.bin")):
        stale.unlink()
    # independent contiguous tensors: safetensors refuses shared storage
    shared = _shared(sd)
    sd = {k: v.detach().contiguous().clone() if v.data_ptr() in shared else v.detach().contiguous()
          for k, v in sd.items()}
    limit = _parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k in sorted(sd):
        n = sd[k].numel() * sd[k].element_size()
        if limit is not None and shards[-1] and size + n > limit:
            shards.append({})
            size = 0
        shards[-1][k] = sd[k]
        size += n
    ext, single, index = (".safetensors", SAFE_SINGLE, SAFE_INDEX) if safe_serialization else (".bin", BIN_SINGLE, BIN_INDEX)
    stem = "model" if safe_serialization else "pytorch_model"
    names = [single] if len(shards) == 1 else [f"{stem}-{i + 1:05d}-of-{len(shards):05d}{ext}" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        if safe_serialization:
            save_file(shard, str(path / name), metadata={"format": "pt"})
        else:
            torch.save(shard, path / name)
    if len(shards) > 1:
        total = sum(v.numel() * v.element_size() for v in sd.values())
        wm = {k: name for name, shard in zip(names, shards) for k in shard}
        (path / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": wm}, indent=2))
    return [path / n for n in names]


def _shared(sd: dict[str, torch.Tensor]) -> set[int]:
    seen, shared = set(), set()
    for v in sd.values():
        p = v.data_ptr()
        (shared if p in seen else seen).add(p)
    return shared
