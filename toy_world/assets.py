"""The toy world's tokenizer, embedded lengths, and tiny MobileVLM model directories.

Everything here goes through the project's own code paths (`toy_world.tokenizer`,
`pipeline.templates`, `toy_world.presets`), so the world's lengths are exactly what
`alignkd data build` will measure, and the model dirs are exactly what the trainers load.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pipeline.constants import IMAGE_TOKEN_INDEX
from pipeline.templates import V1_SYSTEM, render
from toy_world.tokenizer import train_tokenizer

# the fixed text of the v1 template, fed to the tokenizer with every fine-tuning record so that
# the system prompt and the role tags become a few tokens each (as they are for LLaMA's)
V1_BOILERPLATE = [V1_SYSTEM, "USER: ASSISTANT:"]


def build_tokenizer(texts: list[str], vocab_size: int, out_dir: Path) -> Any:
    """Train, save and load back (through load_tokenizer, as every consumer will) the tokenizer."""
    from pipeline.tokenizer_load import load_tokenizer

    train_tokenizer(texts, vocab_size, out_dir)
    return load_tokenizer(out_dir)


def embedded_lengths(convs: list[tuple[list[dict], str, bool]], tokenizer: Any, n_vision: int) -> list[int]:
    """Embedded length (text tokens + `n_vision` per image) of each (conversations, template,
    has_image), rendered by the manifest builder's template code.

    The template tokenises each segment on its own, so a length is a sum over segments: each
    distinct segment text is tokenised once (the system prompt and the common questions repeat
    thousands of times), which is what keeps fitting thousands of drafts fast on a busy CPU.
    """
    segs = [render(c, template, has_image, bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id)
            for c, template, has_image in convs]
    texts = sorted({s.text for ss in segs for s in ss if not s.ids})
    ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"] if texts else []
    n_tok = {t: len(i) for t, i in zip(texts, ids)}
    out = []
    for ss in segs:
        n = 0
        for s in ss:
            if not s.ids:
                n += n_tok[s.text]
            else:  # literal ids: <s>, </s>, or the image placeholder that expands to n_vision
                n += sum(n_vision if t == IMAGE_TOKEN_INDEX else 1 for t in s.ids)
        out.append(n)
    return out


def write_models(world: Path, tokenizer_dir: Path, vocab_size: int, seed: int, grid: int,
                 tower_state: dict | None = None) -> dict[str, Path]:
    """`vision_tower/` (the toy CLIP vision config), `teacher_init/` and `student_init/` (random
    MobileVLM-layout checkpoints built from the toy presets, same tokenizer and vocab, the
    projector pooling to `grid` x `grid` vision tokens; the CLIP weights are `tower_state` when given,
    the pre-trained toy tower of `toy_world.tower`). The student's CLIP weights are copied from the teacher's: one frozen tower, as in
    the paper. `save_pretrained` gives each checkpoint its own `vision_tower/config.json` copy
    (relative `mm_vision_tower`), so a checkpoint dir is self-contained and relocatable; the
    tokenizer files are copied in for the same reason."""
    from toy_world import presets

    dirs = {k: world / k for k in ("vision_tower", "teacher_init", "student_init")}
    vt = presets.write_vision_tower(dirs["vision_tower"], presets.toy_vision_config())
    presets.write_random_checkpoint(dirs["teacher_init"], presets.toy_teacher_config(vocab_size, vt, grid), seed=seed,
                                    vision_tower_state=tower_state)
    presets.write_random_checkpoint(dirs["student_init"], presets.toy_student_config(vocab_size, vt, grid), seed=seed + 1,
                                    vision_tower_from=dirs["teacher_init"])
    for k in ("teacher_init", "student_init"):
        for f in sorted(tokenizer_dir.iterdir()):
            shutil.copyfile(f, dirs[k] / f.name)
    return dirs


def vision_tokens_of(checkpoint: Path) -> int:
    """Number of vision tokens a checkpoint's projector emits (grid side squared)."""
    from pipeline.models.config import load_config, projector_grid

    return projector_grid(load_config(checkpoint)) ** 2
