"""The toy world's pre-trained CLIP tower (toy_world/tower.py): labels from the drawing geometry,
features equal to the model's own tower path, deterministic weights, and frozen patch features that
a linear read-out decodes on held-out images far better than a random tower's."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.models.projector import CLIPVisionTower
from pipeline.workflow import DataConfig, ModelsConfig, Workflow, WorldConfig
from toy_world import presets
from toy_world.generate import WorldSpec, make_scenes, render_images
from toy_world.render import object_labels
from toy_world.scenes import Obj, Scene
from toy_world.tower import _features, patch_labels, pretrain_tower, readout


def _world(tmp_path, n_images: int, n_eval: int):
    wf = Workflow(world=WorldConfig(seed=3, n_images=n_images, n_eval_images=n_eval),
                  data=DataConfig(subsets={"short": 160, "long": 320}), models=ModelsConfig(num_vision_tokens=16))
    spec = WorldSpec.from_workflow(wf)
    train, held = make_scenes(spec)
    (tmp_path / "images").mkdir()
    for name, png in render_images(spec, train + held):
        (tmp_path / "images" / name).write_bytes(png)
    return train, held


def test_patch_labels_follow_the_drawn_pixels():
    big = Obj("square", "red", "big", 0, 0, 10.0, 10.0, 9.0)  # top-left cell, pixels ~2..18
    scene = Scene("x.png", 40, "plain", (big,))
    lab = object_labels(scene, 64)
    assert lab[10, 10] == 1 and lab[40, 40] == 0
    pl = patch_labels(scene, 64, 4)  # 16 x 16 patches, row-major
    grid = pl["colour"].reshape(16, 16)
    assert grid[2, 2] == 1 and grid[10, 10] == 0  # red = class 1; background = 0
    assert (pl["shape"].reshape(16, 16)[2, 2], pl["size"].reshape(16, 16)[2, 2]) == (2, 1)  # square, big
    # the 3 x 3 cell of every patch: patch centres 2, 6, ..., 62 px; cell edges at 21.3 and 42.7
    assert pl["row"].reshape(16, 16)[:, 0].tolist() == [0] * 5 + [1] * 6 + [2] * 5
    assert pl["col"].reshape(16, 16)[0].tolist() == [0] * 5 + [1] * 6 + [2] * 5


def test_features_equal_the_model_tower_path():
    tower = CLIPVisionTower(presets.toy_vision_config(), -2)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(_features(tower.vision_tower, x), tower(x), rtol=0, atol=0)


def test_pretrained_tower_is_deterministic_and_linearly_readable(tmp_path):
    train, held = _world(tmp_path, n_images=64, n_eval=16)
    vision = presets.toy_vision_config()
    sd, rep = pretrain_tower(vision, train, held, tmp_path / "images", seed=3, steps=60)
    a, _ = pretrain_tower(vision, train[:8], held[:2], tmp_path / "images", seed=3, steps=3)
    b, _ = pretrain_tower(vision, train[:8], held[:2], tmp_path / "images", seed=3, steps=3)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the same read-out (heads trained the same way) on a random tower's frozen features
    from torch import nn
    from transformers import CLIPVisionModel

    from toy_world.tower import HEADS, _load

    torch.manual_seed(3)
    rand = CLIPVisionModel(vision)
    x, y = _load(train, tmp_path / "images", vision)
    heads = nn.ModuleDict({k: nn.Linear(vision.hidden_size, n) for k, n in HEADS.items()})
    opt = torch.optim.AdamW(heads.parameters(), lr=3e-3)
    with torch.no_grad():
        f = _features(rand, x)
    for _ in range(60):
        loss = sum(nn.functional.cross_entropy(heads[k](f).flatten(0, 1), y[k].flatten()) for k in HEADS)
        opt.zero_grad()
        loss.backward()
        opt.step()
    base = readout(rand, heads, *_load(held, tmp_path / "images", vision))
    assert rep["colour"] >= 0.75 and rep["object"] >= 0.95, rep  # 60 steps; the default 300 reach ~0.99
    assert rep["colour"] > base["colour"] + 0.2, (rep, base)
    assert min(rep["row"], rep["col"]) >= 0.99  # the cell of a patch is its position embedding: read at once
    assert np.isfinite(rep["final_train_loss"])
