"""When does a from-scratch toy VLM start to read the image? (the measurement behind the toy sizing)

    .venv/bin/python -m benchmarks.grounding_onset --world runs/toy/world --model teacher_init --lr 5e-4
    .venv/bin/python -m benchmarks.grounding_onset --world runs/toy/world --model student_init --lr 1e-3 --data qa
    .venv/bin/python -m benchmarks.grounding_onset --world runs/dev/world --model teacher_init --lr 5e-4 \
        --data qa-packed --turns 8 --steps 500 --every 100      # a dev world: see "answer accuracy"

Trains `<world>/<model>` (or any MobileVLM checkpoint path) on the world's captions (`--data
captions`, template plain), its image QA (`--data qa`, template v1), or QA built from its scenes
with `--turns` one-word questions about one image per record (`--data qa-packed`, template v1;
LLaVA-1.5 packs one image's VQAv2/GQA questions into one conversation the same way) with AdamW,
batch `--batch`, one thread, and every `--every` steps prints the held-out loss of 64 records the
loop never trains on, with each record's own image and with another record's image
(`evaluation.heldout.image_use`). The gap between them is ~0 while the model is image-blind and
rises when it starts reading the image: the "onset" the toy world's docstring and the demo's
learning rates refer to.

With QA data it also prints the answer accuracy on the world's `data/eval.json` (teacher-forced:
is the argmax at the answer's first token the answer's first token), with the own and with
another record's image: exact match's early, cheap proxy. That is the world's eval split, so size
things on a dev world (`world.seed` other than the workflow's, built with `alignkd toy world`),
never on the world whose eval numbers you report.

This is a plain single-process loop (no DeepSpeed, constant learning rate): it isolates the
learning dynamics from the recipe, at ~0.25 s (student) / 0.65-1.4 s (teacher) per step here.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

HELD = 64  # held-out records for the gap (the first ones of the file; never trained on)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.grounding_onset", description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", default="runs/toy/world", help="a toy world directory (alignkd toy world)")
    ap.add_argument("--model", default="student_init", help="checkpoint: a name inside --world or a path")
    ap.add_argument("--data", choices=("captions", "qa", "qa-packed"), default="captions")
    ap.add_argument("--turns", type=int, default=8, help="qa-packed: one-word questions per record")
    ap.add_argument("--records", type=int, default=2000, help="qa-packed: training records (images cycled)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="optional JSON file for the curve")
    ap.add_argument("--save", default=None, help="optional checkpoint dir for the trained model (e.g. to chain captions -> QA)")
    a = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from evaluation.heldout import image_use, pad_encoded
    from pipeline.models import MobileVLM, preprocess_image
    from pipeline.templates import encode_conversation

    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    world = Path(a.world)
    ckpt = world / a.model if (world / a.model).is_dir() else Path(a.model)
    tok = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    model = MobileVLM.from_pretrained(ckpt)
    template = "plain" if a.data == "captions" else "v1"
    if a.data == "qa-packed":
        held, train = packed_qa(world, a.turns, a.records, a.seed)
    else:
        name = "pretrain" if a.data == "captions" else "finetune"
        records = [r for r in json.loads((world / "data" / f"{name}.json").read_text()) if r.get("image")]
        held, train = records[:HELD], records[HELD:]
    evals = json.loads((world / "data" / "eval.json").read_text()) if a.data != "captions" else []
    enc = [encode_conversation(r["conversations"], template, tok, True) for r in train]
    pixels: dict[str, torch.Tensor] = {}

    def image(rel: str) -> torch.Tensor:
        if rel not in pixels:
            with Image.open(world / "images" / rel) as im:
                pixels[rel] = preprocess_image(im.convert("RGB"), model.config)
        return pixels[rel]

    def batch(idx: list[int]) -> tuple[torch.Tensor, ...]:
        ids, lab, am = pad_encoded([enc[i] for i in idx])
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
                acc = answer_accuracy(model, tok, evals, image) if evals else {}
                row = {"step": step, "train_loss": round(loss.item(), 4), **u, **acc,
                       "cpu_s": round(time.process_time() - t0, 1)}
                curve.append(row)
                more = f"  answer acc {acc['answer_acc']:.3f} (other image {acc['answer_acc_other_image']:.3f})" if acc else ""
                print(f"step {step:4d}  train {row['train_loss']:.3f}  held own {u['loss_own_image']:.3f}  "
                      f"other {u['loss_other_image']:.3f}  gap {u['gap']:+.3f}{more}  cpu {row['cpu_s']:.0f} s", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"args": vars(a), "curve": curve}, indent=2))
    if a.save:
        model.save_pretrained(a.save)
    return curve


def packed_qa(world: Path, turns: int, n_records: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(held, train) records of `turns` distinct one-word questions about one training image each
    (v1 conversations, <image> in the first turn). The HELD held-out records use the first HELD
    images and training cycles over the others, so the held-out images are never trained on."""
    import numpy as np

    from pipeline.constants import IMAGE_PLACEHOLDER
    from toy_world.scenes import Scene
    from toy_world.tasks import random_qa

    scenes = json.loads((world / "scenes.json").read_text())
    train_scenes = [Scene.from_json(scenes[k]) for k in sorted(scenes) if k.startswith("train_")]
    if len(train_scenes) <= HELD:
        raise SystemExit(f"{world}: qa-packed needs more than {HELD} training images, the world has {len(train_scenes)}")
    rng = np.random.default_rng([seed, 7])

    def record(scene: Scene) -> dict:
        conv, seen = [], set()
        for _ in range(8 * turns):  # small scenes have few distinct questions: take what there is
            qa = random_qa(scene, rng, one_word_only=True)
            if qa.question in seen:
                continue
            seen.add(qa.question)
            human, answer = qa.turn(one_word=True)
            conv += [{"from": "human", "value": (f"{IMAGE_PLACEHOLDER}\n" if not conv else "") + human},
                     {"from": "gpt", "value": answer}]
            if len(conv) == 2 * turns:
                break
        return {"image": scene.image, "conversations": conv}

    held = [record(s) for s in train_scenes[:HELD]]
    rest = train_scenes[HELD:]
    return held, [record(rest[i % len(rest)]) for i in range(n_records)]


@torch.no_grad()
def first_answer_tokens(model, tok, records: list[dict], image: Callable[[str], torch.Tensor], swap: bool = False,
                        batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted, target) first answer token of each one-word eval record [N], teacher-forced in
    one forward per batch; `swap`: each record gets the next record's image (rolled in its batch)."""
    from evaluation.heldout import pad_encoded
    from pipeline.constants import IGNORE_INDEX
    from pipeline.templates import encode_conversation

    model.eval()
    preds, targets = [], []
    for i in range(0, len(records), batch_size):
        batch = records[i : i + batch_size]
        enc = [encode_conversation(r["conversations"], "v1", tok, True) for r in batch]
        ids, lab, am = pad_encoded(enc)
        images = torch.stack([image(r["image"]) for r in batch])
        out = model(input_ids=ids, images=images.roll(1, dims=0) if swap else images, attention_mask=am, labels=lab)
        pred, tgt = out.logits[:, :-1].argmax(-1), out.labels[:, 1:]  # [B, L-1]: position t predicts t+1
        first = (tgt != IGNORE_INDEX).int().argmax(1)  # [B] the answer's first token
        rows = torch.arange(len(batch))
        preds.append(pred[rows, first])
        targets.append(tgt[rows, first])
    model.train()
    return torch.cat(preds), torch.cat(targets)


def answer_accuracy(model, tok, records: list[dict], image: Callable[[str], torch.Tensor]) -> dict:
    """Forced first-token accuracy with each record's own image and with another record's (a model
    that ignores the image scores the same with both)."""
    out = {}
    for key, swap in (("answer_acc", False), ("answer_acc_other_image", True)):
        pred, target = first_answer_tokens(model, tok, records, image, swap)
        out[key] = round(float((pred == target).float().mean()), 4)
    return out


if __name__ == "__main__":
    main()
