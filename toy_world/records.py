"""LLaVA-format records of the toy world: captions (pretrain), mixed QA (finetune), held-out
one-word QA (eval).

Fine-tuning records are built in two steps because Short/Long membership is measured in
*embedded tokens* (template + tokenizer + vision tokens), which are only known once the
tokenizer has been trained on the text: first a `Draft` holds a pool of turns and a target band,
then `fit_turns` keeps the number of turns that lands the record in its band (Short-designated
records: as many turns as fit the short limit; Long-designated ones: the fewest turns that exceed
it, so they are Long-only without approaching the long limit). That makes the Long-only share
equal `world.long_fraction` by construction instead of by luck.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.constants import IMAGE_PLACEHOLDER
from toy_world.scenes import Scene, caption, detailed_description
from toy_world.tasks import IMAGE_TASKS, ONE_WORD, QA, random_qa, text_qa

LONG_INSTRUCTIONS = (
    "Please look at the picture carefully before you answer. I would like a complete description "
    "of everything in it: for every shape you can see, tell me its colour, whether it is big or "
    "small, and where it is in the picture.",
    "Describe this image in detail. Go through the shapes one by one and for each of them say what "
    "kind of shape it is, what colour it has, how big it is and in which part of the picture it is.",
    "I am going to ask you about this picture, so first describe it for me. Mention every shape, "
    "its colour and its size, and say where it is: at the top, in the middle or at the bottom, and "
    "on the left, in the center or on the right.",
)
PREAMBLE = "I will ask you several questions about this picture. Look closely at the shapes. "
# share of QA turns in one-word form, per record kind. One-word answers are the densest grounding
# signal (one supervised, image-determined token per turn), and a tiny model learns to ground only
# after a few thousand such answers, so most turns use it; sentences keep the language varied.
P_WORD = {"single": 0.9, "multi": 0.8, "long": 0.5}


@dataclass
class Draft:
    """A fine-tuning record before its number of turns is fixed."""

    id: str
    kind: str  # single | multi | long | text
    band: str  # short | long: the subset the record is meant to be the boundary case of
    image: str | None
    turns: list[tuple[str, str]]  # the pool of (human, gpt) turns, in order
    image_turn: int = 0  # the turn whose human text carries <image> (ignored without image)
    min_turns: int = 1
    max_turns: int = 1
    tasks: list[str] = field(default_factory=list)

    def conversations(self, k: int) -> list[dict]:
        conv = []
        for t, (h, g) in enumerate(self.turns[:k]):
            if self.image is not None and t == self.image_turn:
                h = f"{IMAGE_PLACEHOLDER}\n{h}"
            conv += [{"from": "human", "value": h}, {"from": "gpt", "value": g}]
        return conv

    def record(self, k: int) -> dict:
        rec = {"id": self.id}
        if self.image is not None:
            rec["image"] = self.image
        rec["conversations"] = self.conversations(k)
        return rec


def pretrain_record(rid: str, scene: Scene, rng: np.random.Generator) -> dict:
    """`plain` template: the human turn is only the image, the caption is the target."""
    return {
        "id": rid,
        "image": scene.image,
        "conversations": [{"from": "human", "value": IMAGE_PLACEHOLDER}, {"from": "gpt", "value": caption(scene, rng)}],
    }


def _qa_turns(scene: Scene, rng: np.random.Generator, n: int, p_word: float) -> tuple[list[tuple[str, str]], list[str]]:
    """`n` distinct QA turns about `scene` (one-word form with probability `p_word`)."""
    turns, tasks, seen = [], [], set()
    for _ in range(4 * n):
        if len(turns) == n:
            break
        qa = random_qa(scene, rng)
        if qa.question in seen:
            continue
        seen.add(qa.question)
        turns.append(qa.turn(one_word=bool(rng.random() < p_word)))
        tasks.append(qa.task)
    return turns, tasks


def draft(rid: str, kind: str, scene: Scene | None, rng: np.random.Generator, multi_turns: int = 6) -> Draft:
    """One fine-tuning draft of the given kind (`scene` is None only for kind 'text'); a 'multi'
    draft holds `multi_turns` - 4 .. `multi_turns` QA turns, at least 2 (world.multi_turns)."""
    if kind == "text":
        qas = [text_qa(rng) for _ in range(int(rng.integers(1, 3)))]
        turns = [qa.turn(one_word=bool(rng.random() < 0.5)) for qa in qas]
        return Draft(rid, kind, "short", None, turns, -1, 1, len(turns), [q.task for q in qas])
    assert scene is not None
    if kind == "single":
        qa = random_qa(scene, rng)
        return Draft(rid, kind, "short", scene.image, [qa.turn(one_word=bool(rng.random() < P_WORD[kind]))], 0, 1, 1, [qa.task])
    if kind == "multi":
        n = int(rng.integers(max(2, multi_turns - 4), multi_turns + 1))
        turns, tasks = _qa_turns(scene, rng, n, p_word=P_WORD[kind])
        image_turn = 0
        if rng.random() < 0.2:  # the image arrives in a later turn, after a text-only exchange
            qa = text_qa(rng)
            turns, tasks = [qa.turn(one_word=True)] + turns[: multi_turns - 1], [qa.task] + tasks[: multi_turns - 1]
            image_turn = 1
        return Draft(rid, kind, "short", scene.image, turns, image_turn, min(2, len(turns)), len(turns), tasks)
    if kind == "long":
        turns, tasks = _qa_turns(scene, rng, 12, p_word=P_WORD[kind])
        if rng.random() < 0.5:  # a long instruction with a long, fully grounded answer first
            instr = LONG_INSTRUCTIONS[int(rng.integers(len(LONG_INSTRUCTIONS)))]
            turns.insert(0, (instr, detailed_description(scene)))
            tasks.insert(0, "describe")
            min_turns = 1
        else:  # many turns, opened by a preamble
            turns[0] = (PREAMBLE + turns[0][0], turns[0][1])
            min_turns = min(3, len(turns))
        return Draft(rid, kind, "long", scene.image, turns, 0, min_turns, len(turns), tasks)
    raise ValueError(f"unknown draft kind {kind!r} (single | multi | long | text)")


def prefixes(d: Draft) -> list[list[dict]]:
    """The conversations of `d` with min_turns..max_turns turns (what `fit_turns` measures)."""
    assert d.image is None or d.image_turn < d.min_turns, d.id  # every prefix holds the image
    return [d.conversations(k) for k in range(d.min_turns, d.max_turns + 1)]


def fit_turns(d: Draft, lens: list[int], short_limit: int, long_limit: int) -> int:
    """Number of turns that puts draft `d` in its band (see the module docstring); `lens[i]` is
    the embedded length of `prefixes(d)[i]`, i.e. of its first min_turns + i turns."""
    by_k = dict(zip(range(d.min_turns, d.max_turns + 1), lens))
    if d.band == "short":
        fit = [k for k, n in by_k.items() if n <= short_limit]
        return max(fit) if fit else d.min_turns
    fit = [k for k, n in by_k.items() if short_limit < n <= long_limit]
    if fit:
        return min(fit)
    under = [k for k, n in by_k.items() if n <= long_limit]
    return max(under) if under else d.min_turns


def eval_record(rid: str, scene: Scene, task: str, rng: np.random.Generator) -> dict | None:
    """One single-turn, one-word question of `task` about `scene` (None: no such question)."""
    for _ in range(10):
        qa: QA | None = IMAGE_TASKS[task](scene, rng)
        if qa is None:
            return None
        if qa.word is not None:
            human, answer = qa.turn(one_word=True)
            return {
                "id": rid,
                "image": scene.image,
                "conversations": [
                    {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{human}"},
                    {"from": "gpt", "value": answer},
                ],
                "task": task,
                "answer": answer,
            }
    return None


def one_word_pairs(records: list[dict]) -> list[tuple[str, str]]:
    """(question, answer) of every one-word turn in `records` (what an image-blind guesser sees)."""
    out = []
    for rec in records:
        conv = rec["conversations"]
        for h, g in zip(conv[0::2], conv[1::2]):
            q = h["value"].replace(f"{IMAGE_PLACEHOLDER}\n", "")
            if q.endswith(ONE_WORD):
                out.append((q.removesuffix(ONE_WORD).strip(), g["value"]))
    return out
