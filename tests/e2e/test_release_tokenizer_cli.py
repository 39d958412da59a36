"""`alignkd eval` and `alignkd probe` on a checkpoint that carries its tokenizer as the releases
(and our exports of them) do: tokenizer.model + config files, no tokenizer.json. The commands must
use that tokenizer (they used to look for tokenizer.json only and fall back to data.tokenizer), and
name a broken one in one line."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from alignkd.cli import app
from pipeline.models import MobileVLM
from tests.pipeline.data_fixtures import qa, write_json, write_png, write_workflow
from tests.pipeline.release_tokenizer import SP_VOCAB, write_release_tokenizer
from toy_world.presets import toy_student_config

pytest.importorskip("sentencepiece")
VOCAB = SP_VOCAB


@pytest.fixture(scope="module")
def setup(tmp_path_factory, toy_vision_dir, sp_model) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("release_cli")
    torch.manual_seed(0)
    model = root / "model"
    MobileVLM(toy_student_config(VOCAB, toy_vision_dir, grid=4)).save_pretrained(model)
    write_release_tokenizer(model, sp_model)
    img = root / "img"
    for i, c in enumerate([(200, 30, 30), (30, 30, 200)]):
        write_png(img / f"{i}.png", c, size=24)
    recs = [qa(f"e{i}", f"{i}.png", [("kalo mine?", "rusa.")]) for i in range(2)]
    ds = {"name": "ev", "json": str(write_json(root / "eval.json", recs)), "image_root": str(img),
          "template": "v1", "stage": "finetune"}
    # data.tokenizer points nowhere usable: only the model's own tokenizer can serve
    wf = write_workflow(root / "wf.yaml", [ds], root / "no_tokenizer_here", root / "out", {"short": 512}, 16, eval=ds)
    return {"model": model, "wf": wf, "root": root}


def test_eval_and_probe_use_the_checkpoints_tokenizer_model(setup):
    runner = CliRunner()
    out = setup["root"] / "eval_out"
    r = runner.invoke(app, ["eval", "--model", str(setup["model"]), "--workflow", str(setup["wf"]),
                            "--out", str(out), "--batch-size", "2"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 2
    r = runner.invoke(app, ["probe", "--model", str(setup["model"]), "--data", str(setup["wf"]),
                            "--out", str(setup["root"] / "probe_out"), "--limit", "2", "--batch-size", "2"])
    assert r.exit_code == 0, r.output + repr(r.exception)


def test_a_broken_tokenizer_model_is_named_in_one_line(setup, tmp_path):
    broken = shutil.copytree(setup["model"], tmp_path / "broken")
    (broken / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    r = CliRunner().invoke(app, ["eval", "--model", str(broken), "--workflow", str(setup["wf"]),
                                 "--out", str(tmp_path / "o")])
    flat = re.sub(r"[\s│]+", "", r.output)  # typer draws the error in a box, wrapping long lines
    assert r.exit_code != 0 and re.sub(r"\s", "", f"{broken}/tokenizer.model") in flat, r.output
    assert "notareadableSentencePiecemodel" in flat and "tiktoken" not in flat, r.output
