"""evaluation.image_cache on a real tiny MobileVLM and real image files:

* `PixelCache` returns, once per file and preprocessing mode, exactly `preprocess_image` of it;
* under `vision_token_cache`, `encode_images` returns bit for bit what the model returns for the same
  batch (repeated images, new images alone and in groups, one-image batches), runs the tower on
  fewer images, steps aside under grad, and is restored on exit;
* `alignkd eval`'s measurements (generation with own and other images, image use, transfer) are
  identical with the caches and without.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.heldout import evaluate, image_use, with_other_images
from evaluation.image_cache import PixelCache, vision_token_cache
from evaluation.transfer import transfer_metrics
from pipeline.models import MobileVLM, preprocess_image
from tests.pipeline.data_fixtures import caption, qa
from toy_world.presets import toy_student_config, toy_teacher_config


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    """Five distinct noise PNGs, not square (the pad path differs from the centre crop)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"im{i}.png")
        Image.fromarray(rng.integers(0, 256, (14 + i, 20, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def _tower_images(model: MobileVLM) -> list[int]:
    """A running count of the images the vision tower has encoded."""
    n = [0]
    model.vision_tower.register_forward_hook(lambda mod, args, out: n.__setitem__(0, n[0] + args[0].shape[0]))
    return n


def test_pixel_cache_equals_preprocess_image_once_per_file_and_mode(toy_vision_dir, tok, images):
    torch.manual_seed(0)
    pad = MobileVLM(toy_student_config(len(tok), toy_vision_dir)).eval()
    crop_cfg = copy.deepcopy(pad.config)
    crop_cfg.image_aspect_ratio = None if getattr(pad.config, "image_aspect_ratio", None) == "pad" else "pad"
    crop = MobileVLM(crop_cfg).eval()
    cache = PixelCache()
    for model in (pad, crop):
        for p in images:
            with Image.open(p) as im:
                want = preprocess_image(im.convert("RGB"), model.config)
            got = cache.pixels(p, model)
            assert torch.equal(got, want) and cache.pixels(str(p), model) is got  # read once, any path form
    assert not torch.equal(cache.pixels(images[0], pad), cache.pixels(images[0], crop))  # modes kept apart
    full = PixelCache(max_bytes=0)  # over its budget: preprocessed on every call, same values
    a, b = full.pixels(images[1], pad), full.pixels(images[1], pad)
    assert a is not b and torch.equal(a, cache.pixels(images[1], pad)) and full.bytes == 0


def test_vision_token_cache_returns_the_models_own_batch_values(toy_vision_dir, tok, images):
    torch.manual_seed(0)
    model = MobileVLM(toy_student_config(len(tok), toy_vision_dir)).eval()
    cache = PixelCache()
    px = torch.stack([cache.pixels(p, model) for p in images])  # [5, 3, S, S]
    # batches as eval builds them: fresh, repeated, one new among cached ones, two new, duplicates,
    # rotated, one image alone
    batches = [[0, 1], [1, 0], [2, 0, 1], [3, 4, 0], [4, 4, 2, 2], [1, 2, 3, 4, 0], [3], [0, 1, 2, 3, 4]]
    with torch.no_grad():
        want = [model.encode_images(px[b]) for b in batches]
        n = _tower_images(model)
        with vision_token_cache(model):
            got = [model.encode_images(px[b]) for b in batches]
            assert model.encode_images.on  # this machine's tower gave the same rows in other compositions
            with torch.enable_grad():
                model.encode_images(px[:2]).sum().backward()  # training: the model's own graph
    assert "encode_images" not in vars(model)  # the method is back
    for b, w, g in zip(batches, want, got):
        assert torch.equal(g, w), f"batch {b}"
    # first batch 2 + its checks (2 + 2), then new images only: [2] as a pair, [3, 4], the lone [3],
    # and the grad batch of 2; the uncached path would have encoded 23 + 2
    assert n[0] == 2 + 4 + 2 + 2 + 1 + 2


def test_eval_measurements_are_identical_with_and_without_caches(toy_vision_dir, tok, images):
    torch.manual_seed(0)
    cfg = toy_student_config(len(tok), toy_vision_dir)
    cfg.initializer_range = 0.1  # greedy answers that differ between records
    student = MobileVLM(cfg).eval()
    teacher = MobileVLM(toy_teacher_config(len(tok), toy_vision_dir)).eval()
    root = images[0].parent
    words = ["red", "blue", "two", "left", "top", "yes", "no"]
    recs = [qa(f"q{i}", f"im{i % 4}.png", [("What colour is the square? " * (1 + i % 3), words[i % 7])])
            for i in range(7)]  # 4 images, shown 1-2 times each; batches of 3: 3, 3, 1
    caps = [caption(i, f"im{i}.png", "a red square at the top left") for i in range(5)]

    def measure(pixels: PixelCache | None) -> tuple:
        return (evaluate(student, tok, recs, root, "v1", 3, 4, False, pixels),
                evaluate(student, tok, with_other_images(recs), root, "v1", 3, 4, False, pixels),
                image_use(student, tok, caps, root, "v1", 3, False, pixels),
                transfer_metrics(student, teacher, tok, recs, root, "v1", 3, pixels))

    plain = measure(None)
    n = _tower_images(student)
    with vision_token_cache(student), vision_token_cache(teacher):
        cached = measure(PixelCache())
    assert cached == plain
    assert n[0] < 7 + 7 + 2 * 5 + 7  # the student's tower ran on fewer images than it was shown
