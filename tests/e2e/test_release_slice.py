"""A real-width slice of the released models, laid out as released, through the real commands:

    data build → teacher-dump (local Ray) → student-train cached, finetune, 1 step (1-rank ZeRO-2)
    → export (bf16) → reload: logits equal the trained weights'

Teacher: 2 layers of MobileVLM V2 7B (4096 hidden, 32 heads, ffn 11008, vocab 32000); student:
2 layers of 1.7B (2048, 16 heads, ffn 5632); both with the released CLIP ViT-L/14-336 tower (by its
released name: the architecture is built in, the weights come from the shards) and the LDPv2
projector's 144 tokens; bf16 `.bin` shards, config.json with the released keys, tokenizer.model.
The shapes are `benchmarks.cache_size`'s slice (its builder, with the student at 2 layers); the
weights are random. 3 samples, one optimiser step, no checkpoint but the one the export reads
(train.save_every 0, keep_checkpoints 1), everything deleted at the end.

Opt-in (5-7 minutes and 9.4 GB of disk on a 2-core CPU machine, docs/release_checkpoints.md); `-s`
shows the time of each step and the bytes on disk:
    python -m pytest -q -s -m external tests/e2e/test_release_slice.py
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import torch

from benchmarks.cache_size import slice_setting
from benchmarks.synth import Arch, configs
from pipeline.fingerprint import vocab_fingerprint
from pipeline.models import CLIP_L14_336, MobileVLM
from tests.e2e.release_run import alignkd, logits, manifest_rows, write_data, write_workflow
from tests.pipeline.release_checkpoint import write_release_checkpoint

# opt-in (5-7 min, 9.4 GB of disk): `external` tests are deselected unless -m names them
pytestmark = [pytest.mark.slow, pytest.mark.external]

STUDENT = Arch(2, 2048, 16, 5632)  # MobileVLM V2 1.7B's widths, 2 of its 24 layers


def _slice_configs():
    """(student, teacher) configs: cache_size's 7B slice with a 2-layer 1.7B student."""
    s = dataclasses.replace(slice_setting(n_samples=3, batch=1, n_text=24, n_resp=8), student=STUDENT)
    with tempfile.TemporaryDirectory() as unused:  # real_vision: no tower directory is read
        student, teacher = configs(s, Path(unused))
    assert teacher.mm_vision_tower == student.mm_vision_tower == CLIP_L14_336
    return student, teacher


def test_real_width_slice_dump_train_export_reload(tmp_path, sp_model):
    root = tmp_path
    try:
        _run(root, sp_model)
    finally:
        shutil.rmtree(root, ignore_errors=True)  # ~10 GB: never left for pytest's kept tmp dirs


def _bytes(path: Path) -> int:
    """Apparent bytes of the files under `path` (hard links once: the run dir links the export)."""
    seen, total = set(), 0
    for f in path.rglob("*"):
        st = f.lstat()
        if f.is_file() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def _run(root: Path, sp_model: bytes) -> None:
    t0 = time.perf_counter()
    times: dict[str, float] = {}

    def lap(name: str) -> None:
        times[name] = time.perf_counter() - t0 - sum(times.values())

    scfg, tcfg = _slice_configs()
    teacher = write_release_checkpoint(root / "MobileVLM_V2-7B", tcfg, sp_model, seed=0)
    student = write_release_checkpoint(root / "MobileVLM_V2-1.7B", scfg, sp_model, seed=1, tower_from=teacher)
    lap("write the release dirs")
    data = write_data(root / "data", n_pretrain=1, n_finetune=2, n_eval=1)
    out = root / "out"
    wf = str(write_workflow(root / "mobilevlm_v2.yaml", teacher, student, data, out))

    info = alignkd("model", "info", str(teacher), cwd=root)
    assert "4096 hidden, 32 heads" in info and "144 vision tokens" in info and "CLIP 24 x 1024, 336 px" in info, info
    alignkd("data", "build", "--workflow", wf, "--no-progress", cwd=root)
    lap("model info + data build")
    alignkd("teacher-dump", "--workflow", wf, "--subset", "short", "--no-progress", cwd=root)
    alignkd("cache", "verify", str(out / "cache" / "short.zarr"), cwd=root)
    lap("teacher-dump + cache verify")
    alignkd("student-train", "--workflow", wf, "--subset", "short", "--stage", "finetune", "--mode", "cached",
            "--max-steps", "1", "--num-gpus", "1", "--export-dtype", "bf16", cwd=root)
    lap("student-train (1 step, checkpoint, export)")

    stage = out / "student" / "finetune"
    final, ckpts = stage / "final", stage / "checkpoints"
    assert [p.name for p in ckpts.glob("step*")] == ["step1"]  # the one checkpoint the export needs
    # the run's peak on disk (nothing is deleted before this point)
    disk = {"release dirs": _bytes(teacher) + _bytes(student), "cache": _bytes(out / "cache"),
            "checkpoint": _bytes(ckpts), "export": _bytes(final), "all": _bytes(root)}
    assert (final / "tokenizer.model").is_file() and vocab_fingerprint(final) == vocab_fingerprint(student)
    module = torch.load(ckpts / "step1" / "mp_rank_00_model_states.pt", weights_only=False, mmap=True)["module"]
    shutil.rmtree(ckpts)  # ~5 GB, not needed past here
    # the trained (fp32) weights as the bf16 export holds them, copied in place (no second 2 GB dict)
    trained = MobileVLM.from_pretrained(student)
    own = trained.state_dict()
    assert {f"student.{k}" for k in own} == {k for k in module if k.startswith("student.")}
    with torch.no_grad():
        for k, v in own.items():
            src = module[f"student.{k}"]
            v.copy_(src.to(torch.bfloat16) if src.is_floating_point() else src)
    del module, own
    rows = manifest_rows(out / "manifest.parquet", "short", 1)
    want = logits(trained, rows)
    del trained
    got = logits(MobileVLM.from_pretrained(final), rows)
    assert got.shape[-1] == 32000 and torch.equal(got, want), (got - want).abs().max()
    lap("reload and compare logits")
    # seen with `pytest -s`; docs/release_checkpoints.md quotes them
    print("\n[real-width slice] " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
          + f"; total {sum(times.values()):.0f} s")
    print("[real-width slice] disk: " + ", ".join(f"{k} {v / 1e6:,.0f} MB" for k, v in disk.items()))
