"""Held-out evaluation: batched greedy generation with the KV cache, exact-match scoring per task.

Records are LLaVA-format with two extra fields, `task` and `answer` (the toy world's eval split);
the prompt is the conversation up to its final "ASSISTANT:" (`templates.encode_prompt`).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from PIL import Image
from tqdm import tqdm

from evaluation.image_cache import PixelCache
from pipeline.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER
from pipeline.models import MobileVLM, preprocess_image
from pipeline.templates import encode_conversation, encode_prompt


@dataclass
class Prediction:
    question_id: str
    task: str
    prompt: str
    answer: str
    prediction: str
    correct: bool


def normalise(text: str) -> str:
    """Exact match up to case, surrounding whitespace and trailing punctuation."""
    return re.sub(r"[.!?,;:]+$", "", text.strip().lower()).strip()


def _batches(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@torch.no_grad()
def evaluate(model: MobileVLM, tokenizer: Any, records: list[dict], image_root: str | Path,
             template: str = "v1", batch_size: int = 32, max_new_tokens: int = 16,
             progress: bool = True, pixels: PixelCache | None = None) -> list[Prediction]:
    """Greedy answers for `records`, in order (`generate_answers` on each record's conversation)."""
    image_root = Path(image_root)
    prompts = [(r["conversations"], image_root / r["image"] if r.get("image") else None) for r in records]
    texts = generate_answers(model, tokenizer, prompts, template, batch_size, max_new_tokens, progress, pixels)
    out = []
    for i, (rec, text) in enumerate(zip(records, texts)):
        answer = str(rec.get("answer", rec["conversations"][-1]["value"]))
        human = rec["conversations"][-2]["value"] if len(rec["conversations"]) >= 2 else ""
        out.append(Prediction(
            question_id=str(rec.get("id", i)), task=str(rec.get("task", "all")),
            prompt=human.replace(f"{IMAGE_PLACEHOLDER}\n", ""), answer=answer,
            prediction=text, correct=normalise(text) == normalise(answer),
        ))
    return out


@torch.no_grad()
def generate_answers(model: MobileVLM, tokenizer: Any, prompts: list[tuple[list[dict], Any]],
                     template: str = "v1", batch_size: int = 32, max_new_tokens: int = 16,
                     progress: bool = True, pixels: PixelCache | None = None) -> list[str]:
    """Greedy answers, in order, to `prompts`: (LLaVA conversation, image) pairs, the image a path,
    a PIL image or None (text-only). The prompt is the conversation up to its final "ASSISTANT:"
    (`encode_prompt`); the answer is the decoded new tokens without special tokens, stripped.

    The one generation path of `alignkd eval` and of the benchmark-harness model class
    (alignkd_harness/): the same prompts in the same order and batch size give the same batches,
    hence bit-identical answers. Prompts are sorted by length (less padding; order restored) and
    right-padded with pad id 0. Image files are preprocessed once each (`pixels`, shared across
    calls when given)."""
    model.eval()
    pixels = pixels if pixels is not None else PixelCache()
    encoded = [encode_prompt(conv, template, tokenizer, image is not None).input_ids for conv, image in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out: dict[int, str] = {}
    bar = tqdm(total=len(prompts), desc="eval", unit="q", disable=not progress)
    for idx in _batches(order, batch_size):
        width = max(len(encoded[i]) for i in idx)
        ids = torch.zeros(len(idx), width, dtype=torch.long)
        am = torch.zeros(len(idx), width, dtype=torch.long)
        images = torch.zeros(len(idx), 3, model.image_size, model.image_size)
        any_image = False
        for row, i in enumerate(idx):
            p, image = encoded[i], prompts[i][1]
            ids[row, : len(p)] = torch.tensor(p)
            am[row, : len(p)] = 1
            if image is not None:
                images[row] = _pixels(image, model, pixels)
                any_image = True
        dev = model.device
        gen = model.generate(input_ids=ids.to(dev), images=images.to(dev, model.dtype) if any_image else None,
                             attention_mask=am.to(dev), max_new_tokens=max_new_tokens)
        for row, i in enumerate(idx):
            out[i] = tokenizer.decode(gen[row].tolist(), skip_special_tokens=True).strip()
        bar.update(len(idx))
    bar.close()
    return [out[i] for i in range(len(prompts))]


@torch.no_grad()
def image_use(model: MobileVLM, tokenizer: Any, records: list[dict], image_root: str | Path,
              template: str = "plain", batch_size: int = 32, progress: bool = True,
              pixels: PixelCache | None = None) -> dict:
    """How much a model reads the image: its mean caption loss (nats per target token) with each
    record's own image and with another record's image (the batch's images rotated by one), and
    the difference `gap` (~0 for a model that ignores the image; the toy captions name every
    object's size, colour, shape and place, so a model that reads them gains up to ~1 nat/token).

    Exact match on one-word answers only moves once a model answers from the image; this moves as
    soon as its text depends on the image at all. Needs distinct images and >= 2 records.
    """
    if len(records) < 2:
        raise ValueError("image_use needs at least 2 caption records (the images are swapped between them)")
    model.eval()
    pixels = pixels if pixels is not None else PixelCache()
    image_root = Path(image_root)
    dev = model.device
    tot = {"own": 0.0, "other": 0.0}
    n_tok = 0
    bar = tqdm(total=len(records), desc="image use", unit="caption", disable=not progress)
    batches = list(_batches(records, max(2, batch_size)))
    if len(batches[-1]) == 1:  # a lone last record has no other image in its batch
        batches[-2:] = [batches[-2] + batches[-1]]
    for batch in batches:
        enc = [encode_conversation(r["conversations"], template, tokenizer, True) for r in batch]
        ids, lab, am = pad_encoded(enc)
        images = torch.stack([pixels.pixels(image_root / r["image"], model) for r in batch])
        k = int((lab[:, 1:] != IGNORE_INDEX).sum())  # target tokens (the model's CE is their mean)
        for key, imgs in (("own", images), ("other", images.roll(1, dims=0))):
            out = model(input_ids=ids.to(dev), images=imgs.to(dev, model.dtype), attention_mask=am.to(dev),
                        labels=lab.to(dev))
            tot[key] += float(out.loss) * k
        n_tok += k
        bar.update(len(batch))
    bar.close()
    own, other = tot["own"] / n_tok, tot["other"] / n_tok
    return {"loss_own_image": round(own, 4), "loss_other_image": round(other, 4), "gap": round(other - own, 4),
            "n_captions": len(records), "n_tokens": n_tok}


def pad_encoded(enc: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, labels, attention_mask), each [B, max length], of encoded samples
    (`encode_conversation` results): pad id 0, label IGNORE_INDEX, mask 0."""
    width = max(len(e.input_ids) for e in enc)
    ids = torch.zeros(len(enc), width, dtype=torch.long)
    lab = torch.full((len(enc), width), IGNORE_INDEX, dtype=torch.long)
    am = torch.zeros(len(enc), width, dtype=torch.long)
    for row, e in enumerate(enc):
        n = len(e.input_ids)
        ids[row, :n], lab[row, :n], am[row, :n] = torch.tensor(e.input_ids), torch.tensor(e.labels), 1
    return ids, lab, am


def with_other_images(records: list[dict]) -> list[dict]:
    """Copies of `records`, each showing the image of the next record (cyclically) whose image
    differs from its own: evaluating these gives exact match *without* the right image, so the
    drop from the normal score is what a model reads from the image. Exact match, unlike
    `image_use`, needs no description data the model was trained to produce."""
    images = [r.get("image") for r in records]
    out = []
    for i, r in enumerate(records):
        other = next((images[(i + k) % len(records)] for k in range(1, len(records))
                      if images[(i + k) % len(records)] not in (None, images[i])), None)
        if other is None:
            raise ValueError("with_other_images needs records with at least two distinct images")
        out.append({**r, "image": other})
    return out


def _pixels(image: "Path | str | Image.Image", model: MobileVLM, cache: PixelCache) -> torch.Tensor:
    """Pixel values [3, S, S] of an image file (through `cache`) or a PIL image (converted to RGB
    either way)."""
    if isinstance(image, Image.Image):
        return preprocess_image(image.convert("RGB"), model.config, model.image_size)
    return cache.pixels(image, model)


def summarise(preds: list[Prediction]) -> dict:
    """{"overall": acc, "n": N, "per_task": {task: {"acc", "n"}}}"""
    per: dict[str, list[bool]] = defaultdict(list)
    for p in preds:
        per[p.task].append(p.correct)
    n = len(preds)
    return {
        "overall": sum(p.correct for p in preds) / n if n else 0.0,
        "n": n,
        "per_task": {t: {"acc": sum(v) / len(v), "n": len(v)} for t, v in sorted(per.items())},
    }


def write_predictions(preds: list[Prediction], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for p in preds:
            d = asdict(p)
            f.write(json.dumps({k: d[k] for k in ("question_id", "task", "prompt", "answer", "prediction", "correct")}) + "\n")
