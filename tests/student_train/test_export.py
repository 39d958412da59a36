"""Export from ZeRO-2 state: fp32 master weights consolidated on rank 0, written in the original
MobileVLM layout in the asked dtype, without the adapters, with the tokenizer beside it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from .test_recipe import one_rank, stage_run, write_workflow  # noqa: F401  (fixture re-export)


def _dtypes(path: Path) -> set[torch.dtype]:
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return {f.get_tensor(k).dtype for k in f.keys()}


@pytest.fixture(scope="module")
def bf16_run(tiny_world, tmp_path_factory):
    """One optimiser step of a bf16 sft run with gradient checkpointing on one rank (real engine),
    its checkpoint and export."""
    mp = pytest.MonkeyPatch()
    from student_train.launch import free_port
    from student_train.recipe import StudentTrainRecipe

    for k, v in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())).items():
        mp.setenv(k, v)
    tmp = tmp_path_factory.mktemp("bf16")
    wf = tiny_world.workflow()
    path = write_workflow(wf, tmp / "wf.yaml", precision="bf16", export_dtype="fp32", gradient_checkpointing=True)
    r = StudentTrainRecipe(stage_run(path, tmp / "run", mode="sft", init=wf.models.student, max_steps=1))
    try:
        r.setup()
        r.train()
        module = {k: v.detach().clone() for k, v in r.engine.module.student.state_dict().items()}
    finally:
        r.cleanup()
        mp.undo()
    return r, module, wf


def test_bf16_run_exports_fp32_masters_and_the_original_tower(bf16_run):
    from pipeline.models import MobileVLM
    from student_train.engine import vision_tower_of

    r, module, wf = bf16_run
    final = r.final_dir
    assert _dtypes(final) == {torch.float32}
    m = MobileVLM.from_pretrained(final)  # strict
    init = MobileVLM.from_pretrained(wf.models.student)
    assert all(v.dtype == torch.bfloat16 for k, v in module.items() if v.is_floating_point())
    sd, moved, finer = m.state_dict(), 0, 0
    prefix = next(n for n, mod in m.named_modules() if mod is vision_tower_of(m)) + "."
    for k, v in sd.items():
        if k.startswith(prefix):
            assert torch.equal(v, init.state_dict()[k]), k  # tower from init, not the bf16 copy
            continue
        assert torch.equal(v.to(torch.bfloat16), module[k]), k  # the engine's weights are the masters, rounded
        moved += not torch.equal(v, init.state_dict()[k])
        finer += not torch.equal(v, module[k].float())
    assert moved > 0 and finer > 0  # trained, and the export kept the masters' extra precision


def test_export_dtype_and_tokenizer(bf16_run, tmp_path):
    from transformers import AutoTokenizer

    from pipeline.models import MobileVLM
    from student_train import checkpoint as ckpt
    from student_train.export import export_student, publish

    r, _, wf = bf16_run
    out = export_student(r.ckpt_dir, ckpt.tag_for(1), Path(wf.models.student), tmp_path / "fp16", torch.float16,
                         Path(wf.data.tokenizer))
    assert _dtypes(out) == {torch.float16} and not (tmp_path / "fp16.tmp").exists()
    assert MobileVLM.from_pretrained(out, dtype=torch.float16).dtype == torch.float16
    assert AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("</s>") == 2
    dest = publish(out, tmp_path / "pub")
    assert os.path.samefile(dest / "model.safetensors", out / "model.safetensors")  # hard link, no copy
    MobileVLM.from_pretrained(dest)
