"""A tiny saved MobileVLM checkpoint (with its tokenizer), noise images and single-question v1
records, shared by the harness tests. Import as `tests.alignkd_harness.harness_fixtures`."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.models import MobileVLM
from pipeline.models.original_compat import OriginalIncompatibleWarning
from tests.pipeline.data_fixtures import make_tokenizer, qa
from toy_world.presets import toy_student_config

QUESTIONS = ["What colour is the square?", "How many circles are there?", "Where is the triangle?",
             "Is there a red square?", "What shape is on the left?", "Is the circle small or large?"]


def write_checkpoint(root: Path, vision_dir: Path) -> Path:
    """root/ck: a random toy student (initializer_range 0.1, so that greedy answers differ between
    questions) over a locally trained tokenizer, saved with the tokenizer files beside it."""
    tok_dir = make_tokenizer(root / "tok")
    from pipeline.tokenizer_load import load_tokenizer

    torch.manual_seed(0)
    cfg = toy_student_config(len(load_tokenizer(tok_dir)), vision_dir)
    cfg.initializer_range = 0.1
    with warnings.catch_warnings():  # the toy's 8x8 grid, which the original code cannot run: not what is tested here
        warnings.simplefilter("ignore", OriginalIncompatibleWarning)
        ck = MobileVLM(cfg).eval().save_pretrained(root / "ck")
    for f in tok_dir.iterdir():
        shutil.copy(f, Path(ck) / f.name)
    return Path(ck)


def write_records(root: Path) -> list[dict]:
    """Nine records: six with a noise image (two aspect ratios), three text-only; tasks set."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    recs = []
    for i in range(9):
        image = None
        if i % 3 != 2:
            h, w = (12 + 2 * i, 20) if i % 2 else (20, 10 + i)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "img" / f"im{i}.png")
            image = f"im{i}.png"
        r = qa(f"q{i}", image, [(QUESTIONS[i % len(QUESTIONS)] + " Answer with one word.", "red")])
        r["task"], r["answer"] = ("colour", "count", "position")[i % 3], "red"
        recs.append(r)
    return recs
