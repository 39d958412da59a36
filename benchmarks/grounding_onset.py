"""When does a from-scratch toy VLM start to read the image? (the measurement behind the toy sizing)

    .venv/bin/python -m benchmarks.grounding_onset --world runs/toy/world --model teacher_init --lr 5e-4
    .venv/bin/python -m benchmarks.grounding_onset --world runs/toy/world --model student_init --lr 1e-3 --data qa

Trains `<world>/<model>` (or any MobileVLM checkpoint path) on the world's captions (`--data
captions`, template plain) or image QA (`--data qa`, template v1) with AdamW, batch 16, one
thread, and every `--every` steps prints the held-out loss of 64 records the loop never trains on,
with each record's own image and with another record's image (`pipeline.evaluation.image_use`).
The gap between them is ~0 while the model is image-blind and rises when it starts reading the
image: the "onset" the toy world's docstring and the demo's learning rates refer to.

This is a plain single-process loop (no DeepSpeed, constant learning rate): it isolates the
learning dynamics from the recipe, at ~0.25 s (student) / 0.65-1.4 s (teacher) per step here.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from PIL import Image

HELD = 64  # held-out records for the gap (the first ones of the file; never trained on)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.grounding_onset", description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", default="runs/toy/world", help="a toy world directory (alignkd toy world)")
    ap.add_argument("--model", default="student_init", help="checkpoint: a name inside --world or a path")
    ap.add_argument("--data", choices=("captions", "qa"), default="captions")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="optional JSON file for the curve")
    a = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from pipeline.constants import IGNORE_INDEX
    from pipeline.evaluation import image_use
    from pipeline.models import MobileVLM, preprocess_image
    from pipeline.templates import encode_conversation

    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    world = Path(a.world)
    ckpt = world / a.model if (world / a.model).is_dir() else Path(a.model)
    tok = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    model = MobileVLM.from_pretrained(ckpt)
    name, template = ("pretrain", "plain") if a.data == "captions" else ("finetune", "v1")
    records = [r for r in json.loads((world / "data" / f"{name}.json").read_text()) if r.get("image")]
    held, train = records[:HELD], records[HELD:]
    enc = [encode_conversation(r["conversations"], template, tok, True) for r in train]
    pixels: dict[str, torch.Tensor] = {}

    def image(rel: str) -> torch.Tensor:
        if rel not in pixels:
            with Image.open(world / "images" / rel) as im:
                pixels[rel] = preprocess_image(im.convert("RGB"), model.config)
        return pixels[rel]

    def batch(idx: list[int]) -> tuple[torch.Tensor, ...]:
        width = max(len(enc[i].input_ids) for i in idx)
        ids = torch.zeros(len(idx), width, dtype=torch.long)
        lab = torch.full((len(idx), width), IGNORE_INDEX, dtype=torch.long)
        am = torch.zeros(len(idx), width, dtype=torch.long)
        for row, i in enumerate(idx):
            n = len(enc[i].input_ids)
            ids[row, :n], lab[row, :n], am[row, :n] = torch.tensor(enc[i].input_ids), torch.tensor(enc[i].labels), 1
        return ids, lab, am, torch.stack([image(train[i]["image"]) for i in idx])

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr)
    rng, step, curve, t0 = random.Random(a.seed), 0, [], time.process_time()
    while step < a.steps:
        order = list(range(len(train)))
        rng.shuffle(order)
        for i in range(0, len(order) - a.batch + 1, a.batch):
            if step >= a.steps:
                break
            model.train()
            ids, lab, am, imgs = batch(order[i : i + a.batch])
            loss = model(input_ids=ids, images=imgs, attention_mask=am, labels=lab).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            step += 1
            if step % a.every == 0:
                u = image_use(model, tok, held, world / "images", template, batch_size=HELD, progress=False)
                row = {"step": step, "train_loss": round(loss.item(), 4), **u, "cpu_s": round(time.process_time() - t0, 1)}
                curve.append(row)
                print(f"step {step:4d}  train {row['train_loss']:.3f}  held own {u['loss_own_image']:.3f}  "
                      f"other {u['loss_other_image']:.3f}  gap {u['gap']:+.3f}  cpu {row['cpu_s']:.0f} s", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"args": vars(a), "curve": curve}, indent=2))
    return curve


if __name__ == "__main__":
    main()
