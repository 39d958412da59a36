"""Exports that the original MobileVLM code (transformers 4.33.1 / tokenizers 0.13.3) loads: a
complete vision-tower dir named by absolute path, both config key spellings, tokenizer files in the
old format, and a loud warning where the original would silently compute something else.

The test at the end runs the original code itself (benchmarks/original_compat.py); it is marked
`external` (deselected by default) and needs ALIGNKD_ORIGINAL_VENV and ALIGNKD_ORIGINAL_SRC:

    ALIGNKD_ORIGINAL_VENV=... ALIGNKD_ORIGINAL_SRC=... .venv/bin/python -m pytest -q -m external tests/pipeline/test_original_compat.py
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.models import MobileVLM
from pipeline.models.original_compat import OriginalIncompatibleWarning, legacy_config_keys
from tests.external import external_env
from toy_world.presets import toy_student_config

TEXTS = ["the red circle is at the top left", "what colour is the square? blue", "USER: ASSISTANT: yes no"]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    from toy_world.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("tok")
    train_tokenizer(TEXTS * 5, 140, d)
    return d


@pytest.fixture(scope="module")
def exported(tok_dir, toy_vision_dir, tmp_path_factory) -> tuple[MobileVLM, Path]:
    """A toy student at the original's 12 x 12 grid, saved + tokenizer copied as exports do."""
    from transformers import AutoTokenizer

    from student_train.export import copy_tokenizer

    torch.manual_seed(0)
    m = MobileVLM(toy_student_config(len(AutoTokenizer.from_pretrained(str(tok_dir))), toy_vision_dir, grid=12)).eval()
    out = tmp_path_factory.mktemp("export") / "ck"
    with warnings.catch_warnings():
        warnings.simplefilter("error", OriginalIncompatibleWarning)  # a 144-token export must not warn
        m.save_pretrained(out)
    copy_tokenizer(tok_dir, out)
    return m, out


def test_tower_dir_is_complete_and_loads_from_another_cwd(exported, tmp_path, monkeypatch):
    from transformers import CLIPImageProcessor, CLIPVisionModel

    from pipeline.models import preprocess_image

    m, ck = exported
    name = json.loads((ck / "config.json").read_text())["mm_vision_tower"]
    assert Path(name).is_absolute() and Path(name) == (ck / "vision_tower").resolve()
    monkeypatch.chdir(tmp_path)  # the original resolves the key against the cwd
    tower = CLIPVisionModel.from_pretrained(name)
    ours = m.vision_tower.vision_tower.state_dict()
    got = tower.state_dict()
    assert {k for k in ours if "position_ids" not in k} <= set(got)
    assert all(torch.equal(got[k], v) for k, v in ours.items() if "position_ids" not in k)
    # the image processor the original builds from the same dir preprocesses as alignkd does
    proc = CLIPImageProcessor.from_pretrained(name)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    px = proc(img, return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(px, preprocess_image(img, m.config), atol=1e-6)


def test_moved_export_still_loads_in_alignkd(exported, tmp_path):
    m, ck = exported
    moved = shutil.copytree(ck, tmp_path / "moved")  # config still names the old absolute path
    shutil.rmtree(moved / "vision_tower")
    shutil.copytree(ck / "vision_tower", moved / "vision_tower")
    m2 = MobileVLM.from_pretrained(moved)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def test_publish_points_at_its_own_tower_and_leaves_the_source(exported, tmp_path):
    from student_train.export import publish

    _, ck = exported
    before = (ck / "config.json").read_bytes()
    dest = publish(ck, tmp_path / "pub")
    assert json.loads((dest / "config.json").read_text())["mm_vision_tower"] == str((dest / "vision_tower").resolve())
    assert (ck / "config.json").read_bytes() == before  # hard-linked files are replaced, not edited


def test_config_has_old_and_new_key_names(exported):
    from pipeline.models import load_config

    _, ck = exported
    d = json.loads((ck / "config.json").read_text())
    assert d["rope_theta"] == d["rope_parameters"]["rope_theta"] == 10000.0
    assert d["torch_dtype"] == d["dtype"] == "float32"
    assert "rope_scaling" not in d  # absent = none for 4.33; a null would make transformers 5 warn
    assert load_config(ck).rope_parameters["rope_theta"] == 10000.0
    scaled = legacy_config_keys({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}})
    assert scaled["rope_theta"] == 5e5 and scaled["rope_scaling"] == {"type": "linear", "factor": 2.0}


def test_tokenizer_files_in_the_old_format_tokenize_the_same(exported, tok_dir):
    from transformers import AutoTokenizer

    _, ck = exported
    tj = json.loads((ck / "tokenizer.json").read_text())
    merges = tj["model"]["merges"]
    assert merges and all(isinstance(m, str) and len(m.split(" ")) == 2 for m in merges)  # tokenizers 0.13: "a b"
    meta = tj["pre_tokenizer"]
    assert meta["type"] == "Metaspace" and meta["add_prefix_space"] is False and meta["prepend_scheme"] == "never"
    cfg = json.loads((ck / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"  # a class transformers 4.33 has
    new, old = AutoTokenizer.from_pretrained(str(tok_dir)), AutoTokenizer.from_pretrained(str(ck))
    for t in TEXTS + [" two  spaces", "x\ny", "</s>USER: the"]:
        assert old(t).input_ids == new(t).input_ids, t


def test_mobilevlm_config_type_is_registered(exported):
    from transformers import AutoConfig

    from pipeline.models import MobileVLMConfig

    _, ck = exported
    assert isinstance(AutoConfig.from_pretrained(str(ck)), MobileVLMConfig)  # no "model of type mobilevlm" warning


def _model_info(path: Path):
    """`alignkd model info PATH` in-process (the typer app itself; stderr kept apart)."""
    from typer.testing import CliRunner

    from alignkd.model_cmd import app

    return CliRunner().invoke(app, ["info", str(path)])


def test_a_grid_the_original_cannot_run_is_loud(tok_dir, toy_vision_dir, tmp_path):
    m = MobileVLM(toy_student_config(100, toy_vision_dir, grid=8))
    with pytest.warns(OriginalIncompatibleWarning, match="12x12 = 144"):
        m.save_pretrained(tmp_path / "g8")
    r = _model_info(tmp_path / "g8")
    assert r.exit_code == 0, r.output
    assert "WARNING: the original MobileVLM code cannot run" in r.stderr and "mm_projector_grid=8" in r.stderr


def test_a_rope_type_transformers_4_33_lacks_is_named(toy_vision_dir):
    from pipeline.models.original_compat import architecture_problems

    cfg = toy_student_config(100, toy_vision_dir, grid=12)
    assert architecture_problems(cfg) == []
    cfg.rope_parameters = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}
    assert ["yarn" in p for p in architecture_problems(cfg)] == [True]


def test_a_144_token_export_is_quiet_in_model_info(exported, tmp_path):
    _, ck = exported
    r = _model_info(ck)
    assert r.exit_code == 0 and "WARNING" not in r.stderr and "loadable by the original code" in r.stdout, r.output


@pytest.mark.slow
@pytest.mark.external
def test_the_original_code_loads_the_export_and_matches(exported, tmp_path):
    """The original MobileVLM code in its pinned venv (benchmarks/original_compat.py)."""
    venv = external_env("ALIGNKD_ORIGINAL_VENV", "a venv path for transformers==4.33.1 tokenizers==0.13.3 "
                         "(benchmarks/original_compat.py creates it when absent)")
    src = external_env("ALIGNKD_ORIGINAL_SRC", "a clone of github.com/Meituan-AutoML/MobileVLM")
    from benchmarks.original_compat import main

    _, ck = exported
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    recs = []
    for i, w in enumerate((64, 48)):  # one square, one padded image
        Image.fromarray(rng.integers(0, 256, (64, w, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
        recs.append({"image": f"{i}.png", "conversations": [{"from": "human", "value": "<image>\nwhat colour is it?"},
                                                            {"from": "gpt", "value": "red"}]})
    (tmp_path / "eval.json").write_text(json.dumps(recs))
    out = tmp_path / "res.json"
    assert main(["--src", src, "--venv", venv, "--model", str(ck), "--eval", str(tmp_path / "eval.json"),
                 "--image-root", str(tmp_path / "img"), "--n", "2", "--out", str(out)]) == 0
    r = json.loads(out.read_text())["models"][str(ck)]
    assert r["logits_max_abs_diff"] < 1e-4 and r["pixel_max_abs_diff"] == 0.0
    assert r["ids_equal"] == r["answers_equal"] == 2
