"""Small generated inputs for the template and manifest tests: a tiny LLaMA-style tokenizer,
PNG images, LLaVA-format JSON and a workflow YAML. Import as `tests.pipeline.data_fixtures`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from pipeline.templates import V1_SYSTEM
from toy_world.tokenizer import train_tokenizer

# Words the tests use, so the tiny vocabulary has whole-word pieces for most of them; other text
# still tokenises (character pieces), which the tests rely on too.
CORPUS = [
    V1_SYSTEM,
    "USER: What colour is the square? ASSISTANT: The square is red.",
    "USER: How many circles are there? ASSISTANT: There are two circles.",
    "USER: Where is the triangle?\nDescribe it. ASSISTANT: The triangle is at the top left.",
    "A red square and a blue circle on a white background.\nTwo green triangles.",
    "yes no one two three four five left right top bottom small large shape shapes",
]


def make_tokenizer(out_dir: Path, vocab_size: int = 320) -> Path:
    train_tokenizer(CORPUS * 8, vocab_size, out_dir)
    return out_dir


def write_png(path: Path, color: tuple[int, int, int] = (200, 30, 30), size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path, format="PNG")
    return path


def write_corrupt_png(path: Path) -> Path:
    """A PNG cut in the middle of its pixel data: opens, but fails to decode."""
    good = write_png(path, size=32).read_bytes()
    path.write_bytes(good[: len(good) // 2])
    return path


def caption(rid: Any, image: str | None, text: str) -> dict:
    rec = {"id": rid, "conversations": [{"from": "human", "value": "<image>\nDescribe the image."},
                                        {"from": "gpt", "value": text}]}
    if image is not None:
        rec["image"] = image
    return rec


def qa(rid: Any, image: str | None, pairs: list[tuple[str, str]], image_turn: int = 0) -> dict:
    """A v1 record; `<image>` goes in front of the question of pair `image_turn` if there is an image."""
    conv = []
    for i, (q, a) in enumerate(pairs):
        conv += [{"from": "human", "value": ("<image>\n" + q) if image is not None and i == image_turn else q},
                 {"from": "gpt", "value": a}]
    rec = {"id": rid, "conversations": conv}
    if image is not None:
        rec["image"] = image
    return rec


def write_json(path: Path, records: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1))
    return path


def write_workflow(path: Path, datasets: list[dict], tokenizer: Path, out_dir: Path,
                   subsets: dict[str, int] | None = None, num_vision_tokens: int = 16, **data: Any) -> Path:
    """A workflow YAML whose `data` section lists `datasets` (dicts of DatasetConfig fields)."""
    cfg = {
        "name": "test",
        "data": {
            "datasets": datasets,
            "tokenizer": str(tokenizer),
            "manifest": str(out_dir / "manifest.parquet"),
            "rejects": str(out_dir / "manifest.rejects.jsonl"),
            "subsets": subsets or {"short": 64, "long": 128},
            "num_workers": 0,
            "batch_size": 4,
            **data,
        },
        "models": {"num_vision_tokens": num_vision_tokens},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
