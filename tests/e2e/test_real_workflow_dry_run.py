"""The real workflow (workflows/mobilevlm_v2.yaml) validated by `--dry-run`, as its user would:
edit the `vars:` block only, build the manifest, then dry-run `teacher-dump` and `student-train`.

There are no real weights here (and no model hub), so the checkpoints are real-SHAPE only: a
config.json of MobileVLM V2 7B / 1.7B (`toy_world.presets`, CLIP-L/14-336 by its released
name, whose architecture is built in) and a small locally trained tokenizer, which the dry runs
must accept: they read configs and tokenizer files, never weights. The data is a tiny
LLaVA-format pre-training and fine-tuning JSON over a few real JPEGs.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.models import CLIP_L14_336
from tests.pipeline.data_fixtures import caption, make_tokenizer, qa, write_json
from toy_world import presets

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "workflows" / "mobilevlm_v2.yaml"
N_PRETRAIN, N_FINETUNE = 16, 16  # + one fine-tuning sample too long for Short (Long only)
RANKS = 8  # the workflow header's `--num-gpus 8`: global 256 = 8 x 8 x 4, 128 = 4 x 8 x 4


def _alignkd(*args: str) -> tuple[int, str]:
    """Run the real `alignkd` CLI in this process: (exit code, stdout + stderr).

    From the repository root, as the workflow's header says: its `train.deepspeed_config`
    (workflows/zero2.json) is relative to it."""
    from alignkd.cli import app

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        res = CliRunner().invoke(app, list(args))
    text = res.output + (f"\n{res.exception!r}" if res.exception and not isinstance(res.exception, SystemExit) else "")
    return res.exit_code, text


def _write_checkpoint(path: Path, cfg, tokenizer: Path) -> Path:
    """A checkpoint directory as released, minus the weights: config.json and the tokenizer."""
    path.mkdir(parents=True)
    d = cfg.to_dict()
    d.pop("transformers_version", None)
    d.update(mm_vision_tower=CLIP_L14_336, torch_dtype="float16")
    (path / "config.json").write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
    for f in tokenizer.iterdir():
        shutil.copyfile(f, path / f.name)
    return path


def _write_images(root: Path, n: int, tint: int) -> list[str]:
    """n small JPEGs of different sizes and colours (sizes differ, so every hash differs)."""
    root.mkdir(parents=True)
    names = []
    for i in range(n):
        Image.new("RGB", (48 + 8 * i, 40), (40 * i % 256, tint, 200)).save(root / f"{i:012d}.jpg", format="JPEG")
        names.append(f"{i:012d}.jpg")
    return names


def edit_vars(src: Path, dst: Path, values: dict[str, Path | str]) -> Path:
    """Copy the workflow with the values of `vars:` entries replaced, line by line on the text:
    everything else in the file stays byte for byte what the repository ships."""
    text = src.read_text()
    for key, value in values.items():
        text, n = re.subn(rf"^(  {key}:)[^\n]*$", lambda m: f"{m.group(1)} {value}", text, count=1, flags=re.M)
        assert n == 1, f"vars.{key} not found in {src}"
    dst.write_text(text)
    return dst


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict[str, Path]:
    """Checkpoints, data, the edited workflow, and its manifest built by `alignkd data build`."""
    root = tmp_path_factory.mktemp("real_workflow")
    tok = make_tokenizer(root / "tokenizer")  # 320 tokens: fits LLaMA's vocab_size 32000
    teacher = _write_checkpoint(root / "ckpt" / "MobileVLM_V2-7B", presets.mobilevlm_v2_7b_config(), tok)
    student = _write_checkpoint(root / "ckpt" / "MobileVLM_V2-1.7B", presets.mobilevlm_v2_1_7b_config(), tok)
    pt_images = _write_images(root / "sharegpt4v" / "images", 4, 120)
    ft_images = _write_images(root / "mobilevlm_v2" / "images", 4, 30)
    pt = write_json(root / "sharegpt4v" / "pretrain.json",
                    [caption(f"pt{i}", pt_images[i % 4], "A red square and a blue circle.") for i in range(N_PRETRAIN)])
    ft = write_json(root / "mobilevlm_v2" / "finetune.json",
                    [qa(f"ft{i}", ft_images[i % 4], [("What colour is the square?", "The square is red.")])
                     for i in range(N_FINETUNE)]
                    + [qa("ft_long", ft_images[0], [("Describe it. " * 200, "yes")])])
    paths = dict(teacher_ckpt=teacher, student_ckpt=student, pretrain_json=pt, pretrain_images=root / "sharegpt4v" / "images",
                 finetune_json=ft, finetune_images=root / "mobilevlm_v2" / "images", out=root / "out")
    wf = edit_vars(WORKFLOW, root / "mobilevlm_v2.yaml", paths)
    # the workflow's 16 tokenising processes are for millions of records; the flag is the CLI's
    rc, out = _alignkd("data", "build", "--workflow", str(wf), "--no-progress", "--num-workers", "1")
    assert rc == 0, out
    return dict(paths, root=root, wf=wf, tokenizer=tok)


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_only_the_vars_block_differs_from_the_shipped_workflow(real):
    ours, shipped = real["wf"].read_text().splitlines(), WORKFLOW.read_text().splitlines()
    changed = [i for i, (a, b) in enumerate(zip(ours, shipped)) if a != b]
    assert len(ours) == len(shipped) and len(changed) == 7
    start = shipped.index("vars:")
    assert all(start < i <= start + 7 for i in changed)


def test_dry_runs_print_the_plan_and_write_nothing(real):
    out = real["out"]
    before = _files(real["root"])

    rc, dump = _alignkd("teacher-dump", "--workflow", str(real["wf"]), "--subset", "short", "--dry-run")
    assert rc == 0, dump
    assert "teacher-dump plan: subset 'short'" in dump
    assert "LLaMA 32 x 4096, 32 heads, vocab 32000, 144 vision tokens; 7.06B params" in dump  # the 7B, from its config
    assert "no weight files" in dump and "the dry run read config.json only" in dump
    assert "one vocabulary" in dump  # teacher, student and data.tokenizer agree
    short = N_PRETRAIN + N_FINETUNE
    assert f"pretrain short {N_PRETRAIN} / long {N_PRETRAIN}; finetune short {N_FINETUNE} / long {N_FINETUNE + 1}" in dump
    assert f"samples {short}   unique images 8" in dump
    assert "actors 8 × (8 CPU, 1 GPU), batch 16, dtype float16" in dump
    size = re.search(r"projected size before compression: .*total ([\d.]+) (MiB|GiB)", dump)
    assert size and float(size.group(1)) > 0, dump
    assert f"{out / 'cache' / 'short.zarr'}" in dump

    rc, plan = _alignkd("student-train", "--workflow", str(real["wf"]), "--subset", "short", "--stage", "all",
                        "--num-gpus", str(RANKS), "--dry-run")
    assert rc == 0, plan
    assert "stages pretrain -> finetune" in plan and "mode cached" in plan
    assert plan.index("  stage pretrain") < plan.index("  stage finetune")
    assert "LLaMA 24 x 2048, 16 heads, vocab 32000, 144 vision tokens; 1.67B params" in plan  # the 1.7B student
    assert "LLaMA 32 x 4096" in plan  # the teacher's config, checked too
    assert "one vocabulary" in plan
    assert f"pretrain short {N_PRETRAIN} / long {N_PRETRAIN}; finetune short {N_FINETUNE} / long {N_FINETUNE + 1}" in plan
    assert f"samples   {N_PRETRAIN} in subset short" in plan and f"samples   {N_FINETUNE} in subset short" in plan
    assert f"global 256 = micro 8 x {RANKS} rank(s) x gradient accumulation 4" in plan
    assert f"global 128 = micro 4 x {RANKS} rank(s) x gradient accumulation 4" in plan
    assert "1 optimiser step(s) per epoch" in plan and "lr 2e-05, projector lr 0.001" in plan
    assert "preset alignkd: 1·sup + 1·rkl + 1·attn + 1·focus + 0.1·all_tokens" in plan
    # before the dump the missing cache is a note, not a refusal
    dump_cmd = f"alignkd teacher-dump --workflow {real['wf']} --subset short"
    assert f"{out / 'cache' / 'short.zarr'} not built yet: run `{dump_cmd}` first" in plan
    assert f"init      {out / 'student' / 'pretrain' / 'final'} (pre-training's export" in plan  # fine-tuning
    # one launch for both stages: its ranks get each stage's resolved run, in order
    runs = " ".join(f"--run {out / 'student' / st / 'student_run.json'}" for st in ("pretrain", "finetune"))
    assert f"--module student_train.launch {runs}" in plan

    assert _files(real["root"]) == before  # nothing written: no cache, no student run, no failures dir
    assert not (out / "cache").exists() and not (out / "student").exists()


def test_a_real_run_refuses_what_the_dry_run_notes(real, tmp_path):
    args = ("student-train", "--subset", "short", "--stage", "pretrain", "--num-gpus", str(RANKS))
    rc, text = _alignkd(*args, "--workflow", str(real["wf"]))
    assert rc == 1 and f"models.student (vars.student_ckpt) ({real['student_ckpt']}): no weight files" in text, text
    # with (stand-in) weights, it is the cache that is missing; nothing is launched either way
    student = tmp_path / "MobileVLM_V2-1.7B"
    shutil.copytree(real["student_ckpt"], student)
    (student / "model.safetensors").write_bytes(b"never read by the checks")
    wf = edit_vars(real["wf"], tmp_path / "weights.yaml", {"student_ckpt": student})
    rc, text = _alignkd(*args, "--workflow", str(wf))
    assert rc == 1 and f"cache {real['out'] / 'cache' / 'short.zarr'} not found: run `alignkd teacher-dump" in text, text
    assert not (real["out"] / "student").exists()


def test_a_missing_checkpoint_is_named_with_its_vars_key(real, tmp_path):
    gone = tmp_path / "nowhere" / "MobileVLM_V2-7B"
    wf = edit_vars(real["wf"], tmp_path / "teacher_gone.yaml", {"teacher_ckpt": gone})
    rc, text = _alignkd("teacher-dump", "--workflow", str(wf), "--subset", "short", "--dry-run")
    assert rc == 1, text
    assert f"models.teacher (vars.teacher_ckpt): no checkpoint directory at {gone}" in text

    gone = tmp_path / "nowhere" / "MobileVLM_V2-1.7B"
    wf = edit_vars(real["wf"], tmp_path / "student_gone.yaml", {"student_ckpt": gone})
    rc, text = _alignkd("student-train", "--workflow", str(wf), "--subset", "short", "--stage", "all",
                        "--num-gpus", str(RANKS), "--dry-run")
    assert rc == 1, text
    assert f"models.student (vars.student_ckpt): no checkpoint directory at {gone}" in text
    assert "data.tokenizer (vars.student_ckpt)" in text  # the manifest's tokenizer lives there too


def test_teacher_and_student_tokenizers_that_differ_are_refused(real, tmp_path):
    teacher = tmp_path / "MobileVLM_V2-7B"
    shutil.copytree(real["teacher_ckpt"], teacher)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (teacher / f).unlink()
    make_tokenizer(tmp_path / "other_tok", vocab_size=300)  # another vocabulary
    for f in (tmp_path / "other_tok").iterdir():
        shutil.copyfile(f, teacher / f.name)
    wf = edit_vars(real["wf"], tmp_path / "other_teacher.yaml", {"teacher_ckpt": teacher})
    for args in (["teacher-dump", "--subset", "short"], ["student-train", "--subset", "short", "--stage", "all",
                                                          "--num-gpus", str(RANKS)]):
        rc, text = _alignkd(*args, "--workflow", str(wf), "--dry-run")
        assert rc == 1, text
        assert "the tokenizers differ: teacher and student must share one vocabulary" in text, text
        assert f"models.teacher (vars.teacher_ckpt) ({teacher}) has vocabulary" in text
