"""Export the trained student (never the adapters) from a ZeRO-2 checkpoint into the original
MobileVLM layout, with the tokenizer beside it: `<out>/<stage>/final/`.

Why from the checkpoint and not from `engine.module`: under fp16/bf16 the module holds rounded
copies; the fp32 master weights live partitioned across the ranks' optimiser states. DeepSpeed's
`zero_to_fp32` merges the partitions (on rank 0, reading every rank's shard from disk) into one
fp32 state dict, which is then cast once to the export dtype. The frozen vision tower is taken
from the initial checkpoint instead: it never changed, and the engine's copy was rounded to the
training dtype (exporting fp32 after a bf16 run must not degrade it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from pipeline.models import MobileVLM, original_compat

STUDENT_PREFIX = "student."  # the student inside the trained module (recipe.TrainModule)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json", "vocab.json", "merges.txt", "generation_config.json")


def consolidated_student_state(ckpt_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """fp32 trainable student parameters (our key names) merged from every rank's ZeRO-2
    partition; frozen parameters are left out."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    full = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag, exclude_frozen_parameters=True)
    return {k[len(STUDENT_PREFIX):]: v for k, v in full.items() if k.startswith(STUDENT_PREFIX)}


def copy_tokenizer(tokenizer_dir: Path, dest: Path) -> list[str]:
    """Copy the HF tokenizer files (those present) so `dest` loads with AutoTokenizer alone, in the
    form both transformers 5 and the original MobileVLM's 4.33 read (original_compat)."""
    copied = []
    for name in _TOKENIZER_FILES:
        src = tokenizer_dir / name
        if src.is_file():
            shutil.copy2(src, dest / name)
            copied.append(name)
    if "tokenizer.json" not in copied and "tokenizer.model" not in copied:
        raise FileNotFoundError(f"no tokenizer.json / tokenizer.model in {tokenizer_dir} (data.tokenizer)")
    original_compat.write_compat_tokenizer(dest)
    return copied


def export_student(ckpt_dir: Path, tag: str, init_dir: Path, out_dir: Path, dtype: torch.dtype,
                   tokenizer_dir: Path) -> Path:
    """Consolidate `ckpt_dir/tag`, write the student to `out_dir` in `dtype` (strict keys), copy
    the tokenizer. Written to a sibling temp dir and renamed, so `out_dir` is complete or absent.

    `init_dir` supplies the architecture (config.json, local vision-tower config) and the frozen
    tower; every other weight comes from the checkpoint (a missing or extra key is an error)."""
    state = consolidated_student_state(ckpt_dir, tag)
    model = MobileVLM.from_pretrained(init_dir, dtype=torch.float32)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}  # from_pretrained freezes the tower
    missing, extra = sorted(trainable - set(state)), sorted(set(state) - trainable)
    if missing or extra:
        raise RuntimeError(f"checkpoint {ckpt_dir / tag} does not match the student of {init_dir}: "
                           f"missing {missing[:5]}, unexpected {extra[:5]}")
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in state.items():
            params[name].copy_(value)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, dtype=dtype)
    copy_tokenizer(tokenizer_dir, tmp)
    original_compat.point_vision_tower(tmp, final=out_dir)  # named where it will be: correct from the rename on
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def publish(final_dir: Path, dest: Path) -> Path:
    """Make `dest` a loadable copy of an exported `final_dir` (hard links when possible: the
    weights are not duplicated on disk): `<out>/` holds the last exported stage, so a run
    directory is itself a checkpoint (`--out runs/toy/teacher` trains the toy teacher in place)."""
    dest.mkdir(parents=True, exist_ok=True)
    for src in final_dir.rglob("*"):
        if src.is_dir():
            continue
        target = dest / src.relative_to(final_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target.unlink()
        try:
            os.link(src, target)
        except OSError:
            shutil.copy2(src, target)
    original_compat.point_vision_tower(dest)  # dest's own tower, not final_dir's (config.json is replaced, not edited)
    return dest
