"""The content of a toy world as plain Python objects: scenes, captions, fine-tuning drafts, eval
questions, the tokenizer's corpus. Writing it to disk is `world.py`'s job."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.constants import IMAGE_PLACEHOLDER
from pipeline.workflow import Workflow, WorldConfig
from toy_world.records import LONG_INSTRUCTIONS, Draft, draft, eval_record, pretrain_record
from toy_world.render import png_bytes, render
from toy_world.scenes import Scene, detailed_description, sample_scene
from toy_world.tasks import IMAGE_TASKS

GENERATOR_VERSION = 3  # bump when the same spec would produce different bytes (stale worlds then need --force)
# independent RNG streams (numpy seeds from [seed, stream, index]) so that changing one count
# does not reshuffle everything else
_S_TRAIN_SCENE, _S_EVAL_SCENE, _S_RENDER, _S_PRETRAIN, _S_FINETUNE, _S_EVAL, _S_PLAN = range(7)
# of the fine-tuning records (the multi-turn share is world.multi_fraction; the rest is single-turn)
TEXT_FRACTION = 0.05


class WorldError(RuntimeError):
    """The world directory cannot be (re)written as asked (message says why and what to do)."""


@dataclass(frozen=True)
class WorldSpec:
    """Everything that determines the bytes of a world (stored in world.json, compared on rerun)."""

    version: int
    seed: int
    image_size: int
    n_images: int
    n_eval_images: int
    n_pretrain: int
    n_finetune: int
    n_eval: int
    long_fraction: float
    multi_fraction: float
    multi_turns: int
    tokenizer_vocab: int
    num_vision_tokens: int
    short_limit: int
    long_limit: int
    tower_steps: int

    @classmethod
    def from_workflow(cls, wf: Workflow) -> "WorldSpec":
        w: WorldConfig = wf.world
        limits = sorted(wf.data.subsets.values()) or [512, 2048]
        return cls(GENERATOR_VERSION, w.seed, w.image_size, w.n_images, w.n_eval_images, w.n_pretrain,
                   w.n_finetune, w.n_eval, w.long_fraction, w.multi_fraction, w.multi_turns, w.tokenizer_vocab, wf.models.num_vision_tokens,
                   limits[0], limits[-1], w.tower_steps).checked()

    @property
    def projector_grid(self) -> int:
        """Side of the square vision-token grid the toy projector pools to."""
        return math.isqrt(self.num_vision_tokens)

    def checked(self) -> "WorldSpec":
        """Self, or WorldError listing every out-of-range value of the world: section."""
        bad = [f"world.{k}={getattr(self, k)} (must be >= 1)" for k in
               ("n_images", "n_eval_images", "n_pretrain", "n_finetune", "n_eval") if getattr(self, k) < 1]
        if self.image_size < 24:
            bad.append(f"world.image_size={self.image_size} (must be >= 24 so that small shapes have pixels)")
        if not 0.0 <= self.multi_fraction <= 1.0 - TEXT_FRACTION:
            bad.append(f"world.multi_fraction={self.multi_fraction} (must be in [0, {1 - TEXT_FRACTION:.2f}])")
        elif not 0.0 <= self.long_fraction <= 1.0 - TEXT_FRACTION - self.multi_fraction:
            bad.append(f"world.long_fraction={self.long_fraction} (must be in [0, {1 - TEXT_FRACTION - self.multi_fraction:.2f}]"
                       " with this world.multi_fraction)")
        if self.tower_steps < 0:
            bad.append(f"world.tower_steps={self.tower_steps} (must be >= 0; 0 keeps a random tower)")
        if self.multi_turns < 2:
            bad.append(f"world.multi_turns={self.multi_turns} (must be >= 2)")
        if self.projector_grid**2 != self.num_vision_tokens or not 1 <= self.projector_grid <= 16:
            bad.append(f"models.num_vision_tokens={self.num_vision_tokens} (the toy projector pools the 16 x 16 patch "
                       "grid to G x G: use a square, 1 .. 256)")
        if bad:
            raise WorldError("invalid world config: " + "; ".join(bad))
        return self


def _rng(seed: int, stream: int, i: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stream, i])


# ------------------------------------------------------------------------------ content
def make_scenes(spec: WorldSpec) -> tuple[list[Scene], list[Scene]]:
    """Training and held-out eval scenes (disjoint image files)."""
    train = [sample_scene(_rng(spec.seed, _S_TRAIN_SCENE, i), f"train_{i:05d}.png", spec.image_size)
             for i in range(spec.n_images)]
    held = [sample_scene(_rng(spec.seed, _S_EVAL_SCENE, i), f"eval_{i:05d}.png", spec.image_size)
            for i in range(spec.n_eval_images)]
    return train, held


def render_images(spec: WorldSpec, scenes: list[Scene]) -> Iterator[tuple[str, bytes]]:
    """(file name, PNG bytes) of each scene, textures from a per-image stream."""
    for i, s in enumerate(scenes):
        yield s.image, png_bytes(render(s, spec.image_size, _rng(spec.seed, _S_RENDER, i)))


def make_pretrain(spec: WorldSpec, scenes: list[Scene]) -> list[dict]:
    # every image once before any repeats (a seeded permutation, cycled)
    order = _rng(spec.seed, _S_PRETRAIN).permutation(len(scenes))
    return [pretrain_record(f"pt-{i:05d}", scenes[int(order[i % len(order)])], _rng(spec.seed, _S_PRETRAIN, i + 1))
            for i in range(spec.n_pretrain)]


def make_drafts(spec: WorldSpec, scenes: list[Scene]) -> list[Draft]:
    n = spec.n_finetune
    n_long, n_text = round(spec.long_fraction * n), round(TEXT_FRACTION * n)
    n_multi = round(spec.multi_fraction * n)
    kinds = ["long"] * n_long + ["text"] * n_text + ["multi"] * n_multi
    kinds += ["single"] * (n - len(kinds))
    plan = _rng(spec.seed, _S_PLAN)
    kinds = [kinds[int(j)] for j in plan.permutation(n)]
    images = plan.integers(len(scenes), size=n)  # with replacement: some images 0, 1, 2, ... times
    return [draft(f"ft-{i:05d}", k, None if k == "text" else scenes[int(images[i])], _rng(spec.seed, _S_FINETUNE, i),
                  multi_turns=spec.multi_turns)
            for i, k in enumerate(kinds)]


def make_eval(spec: WorldSpec, held: list[Scene]) -> list[dict]:
    """Tasks in rotation; a scene without a (new) question of that task is skipped for the next."""
    out, tasks, seen = [], list(IMAGE_TASKS), set()
    for i in range(spec.n_eval):
        rng = _rng(spec.seed, _S_EVAL, i)
        task = tasks[i % len(tasks)]
        for _ in range(50):
            rec = eval_record(f"ev-{i:05d}", held[int(rng.integers(len(held)))], task, rng)
            key = rec and (rec["image"], rec["conversations"][0]["value"])
            if rec is not None and key not in seen:
                seen.add(key)
                out.append(rec)
                break
        else:
            raise WorldError(f"no held-out image has a {task!r} question: raise world.n_eval_images")
    return out


def make_eval_captions(spec: WorldSpec, held: list[Scene]) -> list[dict]:
    """One "describe the image" request per held-out image (template v1, the fine-tuned models'
    format; the answer names every object's shape, colour, size and place): `alignkd eval` measures
    how much a model's loss on the answer rises when it is shown another image, i.e. how much it
    reads the image at all."""
    return [{"id": f"evdesc-{i:05d}", "image": s.image,
             "conversations": [{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{LONG_INSTRUCTIONS[i % len(LONG_INSTRUCTIONS)]}"},
                               {"from": "gpt", "value": detailed_description(s)}]}
            for i, s in enumerate(held)]


def tokenizer_corpus(pretrain: list[dict], drafts: list[Draft], boilerplate: list[str]) -> list[str]:
    """The tokenizer's training text: captions and every turn of every draft's pool (not only the
    turns kept later, so fitting cannot meet an unseen word), plus the template's fixed text once
    per record so that its words become single tokens like the world's own. Eval text stays out;
    its words all occur in training."""
    texts = [c["value"] for r in pretrain for c in r["conversations"]]
    for d in drafts:
        texts += [t for turn in d.turns for t in turn]
        texts += boilerplate
    return texts
