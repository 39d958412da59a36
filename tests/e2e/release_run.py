"""What the release-layout end-to-end tests share: a small LLaVA-format data set in words the
test SentencePiece model knows, the shipped `workflows/mobilevlm_v2.yaml` with its `vars:` pointed at
release directories and its GPU sizes turned into CPU ones, the real `alignkd` CLI as a subprocess,
and the logits of a model on manifest rows. Import as `tests.e2e.release_run`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import torch
import yaml
from PIL import Image

from pipeline.models import MobileVLM, preprocess_image
from tests.pipeline.data_fixtures import caption, qa, write_json

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "workflows" / "mobilevlm_v2.yaml"
# words of tests.pipeline.release_tokenizer's corpus (whole pieces, or a few) and the template's
WORDS = ("kalo", "mine", "rusa", "tovize", "quba", "dofe", "gi", "ho", "zeba", "kamilo")


def write_data(root: Path, n_pretrain: int, n_finetune: int, n_eval: int) -> dict[str, Path]:
    """JPEGs of different sizes and colours; captions (plain), one-turn QA (v1) and a held-out QA
    split, as the released training sets lay them out."""
    img = root / "images"
    img.mkdir(parents=True, exist_ok=True)
    n_img = max(n_pretrain, n_finetune, n_eval)
    for i in range(n_img):
        Image.new("RGB", (40 + 6 * i, 32 + 4 * (i % 3)), (37 * i % 256, 90, 200 - 11 * i % 200)).save(
            img / f"{i:06d}.jpg", format="JPEG")

    def words(i: int, n: int) -> str:
        return " ".join(WORDS[(i + j) % len(WORDS)] for j in range(n))

    def name(i: int) -> str:
        return f"{i % n_img:06d}.jpg"

    pre = [caption(f"pt{i}", name(i), words(i, 6) + ".") for i in range(n_pretrain)]
    ft = [qa(f"ft{i}", name(i), [(words(i, 3) + "?", words(i + 1, 4) + ".")]) for i in range(n_finetune)]
    ev = [qa(f"ev{i}", name(i), [(words(i, 2) + "?", WORDS[i % len(WORDS)])]) for i in range(n_eval)]
    return {"images": img, "pretrain": write_json(root / "pretrain.json", pre),
            "finetune": write_json(root / "finetune.json", ft), "eval": write_json(root / "eval.json", ev)}


def write_workflow(path: Path, teacher: Path, student: Path, data: dict[str, Path], out: Path) -> Path:
    """The shipped real workflow with its `vars:` set, the eval split added, and the sizes of a
    GPU cluster (8 dump workers, fp16, batch 256) replaced by one CPU process each."""
    raw = yaml.safe_load(WORKFLOW.read_text())
    raw["vars"].update(teacher_ckpt=str(teacher), student_ckpt=str(student), pretrain_json=str(data["pretrain"]),
                       pretrain_images=str(data["images"]), finetune_json=str(data["finetune"]),
                       finetune_images=str(data["images"]), out=str(out))
    raw["data"].update(num_workers=1, eval={"name": "release_eval", "json": str(data["eval"]),
                                            "image_root": str(data["images"]), "template": "v1", "stage": "finetune"})
    raw["dump"].update(workers=1, num_gpus_per_worker=0, num_cpus_per_worker=1, batch_size=2, unit_size=4,
                       dtype="float32")
    train = raw["train"]
    train.update(precision="fp32", deepspeed_config=str(REPO / "workflows" / "zero2.json"), num_workers=0,
                 save_every=0, keep_checkpoints=1)
    for stage in ("pretrain", "finetune"):
        train[stage].update(global_batch=2, micro_batch=2)
    raw["eval"] = {"batch_size": 4, "max_new_tokens": 3}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def alignkd(*args: str, cwd: Path, timeout: int = 900) -> str:
    """The real CLI in a subprocess (this checkout's code: PYTHONPATH is passed on); its output."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "alignkd.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"alignkd {' '.join(args)} failed ({proc.returncode}):\n{out[-6000:]}"
    return out


def manifest_rows(manifest: Path, subset: str, n: int) -> list[dict]:
    rows = [r for r in pq.read_table(manifest).to_pylist() if r[f"in_{subset}"] and r["image_path"]]
    return rows[:n]


@torch.no_grad()
def logits(model: MobileVLM, rows: list[dict]) -> torch.Tensor:
    """[n, L_emb, vocab] of `model` on manifest rows of one length each (one row per forward)."""
    out = []
    for r in rows:
        px = preprocess_image(Image.open(r["image_path"]), model.config, image_size=model.image_size)[None]
        ids = torch.tensor([r["input_ids"]])
        out.append(model(input_ids=ids, images=px, attention_mask=torch.ones_like(ids)).logits[0])
    return torch.nn.utils.rnn.pad_sequence(out, batch_first=True)
