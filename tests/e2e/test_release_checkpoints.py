"""Release-layout checkpoints (config.json with the released keys, bf16 `pytorch_model-*.bin`
shards + index, `tokenizer.model` and no tokenizer.json: tests.pipeline.release_checkpoint) through
every command of a real run, as its user types them, on the shipped workflows/mobilevlm_v2.yaml:

    model info → data build → teacher-dump (a real local Ray) → cache verify →
    student-train cached, both stages (1-rank DeepSpeed ZeRO-2, 2 steps each) → student-train sft →
    model info / smoke of the export → eval of the export (and with --teacher)

Tiny widths (a 4 x 256 teacher, a 2 x 128 student, a 2-layer CLIP of 24 x 24 patches pooled to the
released 144 tokens): the layout is what is under test. The export must itself be a checkpoint of
the same layout family: its tokenizer.model beside the weights, the same vocabulary fingerprint,
and logits equal to the trained engine's own weights (the DeepSpeed checkpoint's module state)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import CLIPVisionConfig

from pipeline.fingerprint import vocab_fingerprint
from pipeline.models import MobileVLM
from student_train.run import StudentRun
from tests.e2e.release_run import alignkd, logits, manifest_rows, write_data, write_workflow
from tests.pipeline.release_checkpoint import write_release_checkpoint
from tests.pipeline.release_tokenizer import SP_VOCAB
from toy_world.presets import toy_student_config, toy_teacher_config, write_vision_tower

STEPS = 2


@pytest.fixture(scope="module")
def run(tmp_path_factory, sp_model) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("release_e2e")
    # a CLIP with the released grid geometry (24 x 24 patches, pooled to 12 x 12) at a tiny width
    tower = write_vision_tower(root / "clip", CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=2, num_attention_heads=2,
        image_size=48, patch_size=2, hidden_act="quick_gelu", layer_norm_eps=1e-5))
    ckpt = root / "checkpoints"
    teacher = write_release_checkpoint(ckpt / "MobileVLM_V2-7B", toy_teacher_config(SP_VOCAB, tower, grid=12),
                                       sp_model, seed=0)
    student = write_release_checkpoint(ckpt / "MobileVLM_V2-1.7B", toy_student_config(SP_VOCAB, tower, grid=12),
                                       sp_model, seed=1, tower_from=teacher)
    data = write_data(root / "data", n_pretrain=4, n_finetune=4, n_eval=4)
    wf = write_workflow(root / "mobilevlm_v2.yaml", teacher, student, data, root / "out")
    return {"root": root, "teacher": teacher, "student": student, "wf": wf, "out": root / "out"}


def test_release_directories_are_what_the_releases_ship(run):
    for ckpt in (run["teacher"], run["student"]):
        names = {p.name for p in ckpt.iterdir()}
        shards = {n for n in names if re.fullmatch(r"pytorch_model-\d{5}-of-\d{5}\.bin", n)}
        assert len(shards) >= 2 and names - shards == {
            "config.json", "pytorch_model.bin.index.json", "tokenizer.model", "tokenizer_config.json",
            "special_tokens_map.json"}, names
        cfg = json.loads((ckpt / "config.json").read_text())
        assert cfg["torch_dtype"] == "bfloat16" and "mm_projector_grid" not in cfg and "dtype" not in cfg
        dtypes = {v.dtype for s in shards for v in torch.load(ckpt / s, weights_only=True).values()}
        assert dtypes == {torch.bfloat16, torch.int64}, dtypes  # int64: CLIP's position_ids, as 4.33 saved them


@pytest.mark.slow  # ~3.3 min on 2 CPU cores: 3 DeepSpeed launches and a Ray cluster
def test_every_command_on_release_directories(run):
    wf, out, cwd = str(run["wf"]), run["out"], run["root"]
    info = alignkd("model", "info", str(run["teacher"]), cwd=cwd)
    assert "144 vision tokens" in info and f"vocab {SP_VOCAB}" in info, info
    alignkd("data", "build", "--workflow", wf, "--no-progress", cwd=cwd)
    dump = alignkd("teacher-dump", "--workflow", wf, "--subset", "short", "--no-progress", cwd=cwd)
    store = out / "cache" / "short.zarr"
    verify = alignkd("cache", "verify", str(store), cwd=cwd)
    assert "8 samples" in verify, verify + dump

    students = out / "student"
    alignkd("student-train", "--workflow", wf, "--subset", "short", "--stage", "all", "--mode", "cached",
            "--max-steps", str(STEPS), "--num-gpus", "1", "--export-dtype", "fp32", cwd=cwd)
    alignkd("student-train", "--workflow", wf, "--subset", "short", "--stage", "finetune", "--mode", "sft",
            "--max-steps", "1", "--num-gpus", "1", "--out", str(out / "sft"), cwd=cwd)
    final = students / "finetune" / "final"
    assert (out / "sft" / "finetune" / "final" / "config.json").is_file()
    # --stage all is one launch: fine-tuning ran in pre-training's rank process, and its run file,
    # pending when the command started (its init is pre-training's export), was completed there
    pids = [json.loads((students / st / "run.json").read_text())["pid"] for st in ("pretrain", "finetune")]
    assert pids[0] == pids[1], pids
    assert StudentRun.read(students / "finetune" / "student_run.json").store.vision_source == "recompute"

    # the export is a checkpoint in its own right: its tokenizer is the release's, by content and by file
    assert (final / "tokenizer.model").read_bytes() == (run["student"] / "tokenizer.model").read_bytes()
    assert not (final / "tokenizer.json").exists()
    assert vocab_fingerprint(final) == vocab_fingerprint(run["student"]) == vocab_fingerprint(run["teacher"])
    info = alignkd("model", "info", str(final), cwd=cwd)
    assert "144 vision tokens" in info, info
    alignkd("model", "smoke", str(final), cwd=cwd)

    # reloaded, it computes what the trained engine computed: same logits as the checkpoint's module
    ckpt_dir = students / "finetune" / "checkpoints"
    tag = (ckpt_dir / "latest").read_text().strip()
    assert tag == f"step{STEPS}" and [p.name for p in ckpt_dir.glob("step*")] == [tag]  # keep_checkpoints 1
    module = torch.load(ckpt_dir / tag / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    trained = MobileVLM.from_pretrained(run["student"])
    sd = {k[len("student."):]: v for k, v in module.items() if k.startswith("student.")}
    trained.load_state_dict(sd, strict=True)
    init = MobileVLM.from_pretrained(run["student"])
    rows = manifest_rows(out / "manifest.parquet", "short", 3)
    got, want = logits(MobileVLM.from_pretrained(final), rows), logits(trained, rows)
    assert torch.equal(got, want), (got - want).abs().max()
    assert not torch.equal(want, logits(init, rows))  # ... and training moved it

    report = out / "eval"
    alignkd("eval", "--model", str(final), "--workflow", wf, "--out", str(report), "--teacher", str(run["teacher"]),
            cwd=cwd)
    summary = json.loads((report / "summary.json").read_text())
    preds = (report / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == 4 and summary["transfer"]["n_records"] == 4, summary
