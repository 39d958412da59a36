"""Question/answer generators of the toy world, one per task type, all computed from the scene.

Each generator lists every question it could ask about a scene, then picks an *answer* first
(uniformly among the answers on offer) and a question with that answer second. Balancing the
answer, not the question, keeps the answer prior flat, so a model that ignores the image cannot
score high: the world reports that image-blind ceiling (`blind_accuracy`) next to its counts.

Why these tasks: colour/shape/size only need a glance at one object, but `exist` with hard
negatives (the colour *and* the shape are both in the image, on different objects) needs binding,
`count` needs every object, `position` and "the shape at the top left" need where the vision tokens
sit, and `compare` relates two objects. The last four are where a small student is expected to fall
behind a larger teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from toy_world.scenes import COLOURS, COLS, ROWS, SHAPES, Scene, at_phrase

ONE_WORD = "Answer with one word."  # the suffix that asks for the exact-match answer form


@dataclass(frozen=True)
class QA:
    task: str
    question: str
    word: str | None  # the one-word answer (None: the question has no one-word form)
    sentence: str  # the full-sentence answer

    def turn(self, one_word: bool) -> tuple[str, str]:
        """(human, gpt) text of this QA, in one-word form when asked and available."""
        if one_word and self.word is not None:
            return f"{self.question} {ONE_WORD}", self.word
        return self.question, self.sentence


def _pick(rng: np.random.Generator, cands: list[QA]) -> QA | None:
    """Uniform over distinct answers, then uniform over the questions with that answer."""
    if not cands:
        return None
    answers = sorted({c.word or c.sentence for c in cands})
    a = answers[int(rng.integers(len(answers)))]
    same = [c for c in cands if (c.word or c.sentence) == a]
    return same[int(rng.integers(len(same)))]


def _plural(shape: str) -> str:
    return shape + "s"


def qa_colour(scene: Scene, rng: np.random.Generator) -> QA | None:
    objs, cands = scene.objects, []
    for o in objs:
        if sum(p.shape == o.shape for p in objs) == 1:
            cands.append(QA("colour", f"What colour is the {o.shape}?", o.colour, f"The {o.shape} is {o.colour}."))
        place = at_phrase(o.where)
        cands.append(QA("colour", f"What colour is the shape {place}?", o.colour, f"The shape {place} is {o.colour}."))
    return _pick(rng, cands)


def qa_shape(scene: Scene, rng: np.random.Generator) -> QA | None:
    objs, cands = scene.objects, []
    for o in objs:
        if sum(p.colour == o.colour for p in objs) == 1:
            cands.append(QA("shape", f"What shape is the {o.colour} object?", o.shape, f"The {o.colour} object is a {o.shape}."))
        place = at_phrase(o.where)
        cands.append(QA("shape", f"What shape is {place}?", o.shape, f"There is a {o.shape} {place}."))
    return _pick(rng, cands)


def qa_count(scene: Scene, rng: np.random.Generator) -> QA | None:
    objs = scene.objects
    n = len(objs)
    cands = [QA("count", "How many shapes are there?", str(n), f"There {'is 1 shape' if n == 1 else f'are {n} shapes'}.")]
    for s in SHAPES:
        k = sum(o.shape == s for o in objs)
        cands.append(QA("count", f"How many {_plural(s)} are there?", str(k), f"There {'is' if k == 1 else 'are'} {k} {s if k == 1 else _plural(s)}."))
    # by size rather than by colour: with 6 colours and ≤ 4 objects a colour count is almost
    # always 0 or 1, a prior a blind model could exploit; big/small counts spread over 0..4
    for z in ("big", "small"):
        k = sum(o.size == z for o in objs)
        cands.append(QA("count", f"How many {z} shapes are there?", str(k), f"There {'is' if k == 1 else 'are'} {k} {z} {'shape' if k == 1 else 'shapes'}."))
    return _pick(rng, cands)


def qa_position(scene: Scene, rng: np.random.Generator) -> QA | None:
    cands = []
    for o in scene.objects:
        sent = f"The {o.name} is {at_phrase(o.where)}."
        cands.append(QA("position", f"Is the {o.name} on the left, in the center or on the right?", COLS[o.col], sent))
        cands.append(QA("position", f"Is the {o.name} at the top, in the middle or at the bottom?", ROWS[o.row], sent))
    qa = _pick(rng, cands)
    if qa is not None and rng.random() < 0.25:  # the free-form question (no one-word answer)
        name = qa.sentence.removeprefix("The ").split(" is ")[0]
        return QA("position", f"Where is the {name}?", None, qa.sentence)
    return qa


def qa_exist(scene: Scene, rng: np.random.Generator) -> QA | None:
    present = {(o.colour, o.shape) for o in scene.objects}
    colours = {o.colour for o in scene.objects}
    shapes = {o.shape for o in scene.objects}
    absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    # hard negatives: both words occur in the scene, only their binding is wrong
    hard = [(c, s) for c, s in absent if c in colours and s in shapes]
    if rng.random() < 0.5:
        objs = scene.objects
        o = objs[int(rng.integers(len(objs)))]
        return QA("exist", f"Is there a {o.name}?", "yes", f"Yes, there is a {o.name} {at_phrase(o.where)}.")
    pool = hard if hard and rng.random() < 0.5 else absent
    c, s = pool[int(rng.integers(len(pool)))]
    return QA("exist", f"Is there a {c} {s}?", "no", f"No, there is no {c} {s}.")


def qa_size(scene: Scene, rng: np.random.Generator) -> QA | None:
    cands = [QA("size", f"Is the {o.name} big or small?", o.size, f"The {o.name} is {o.size}.") for o in scene.objects]
    return _pick(rng, cands)


def qa_compare(scene: Scene, rng: np.random.Generator) -> QA | None:
    """Two objects sharing a shape (or a colour) but not a size: which one is bigger?"""
    cands = []
    objs = scene.objects
    for i, a in enumerate(objs):
        for b in objs[i + 1 :]:
            if a.size == b.size:
                continue
            big = a if a.size == "big" else b
            first, second = (a, b) if rng.random() < 0.5 else (b, a)
            if a.shape == b.shape:
                q = f"Which {a.shape} is bigger, the {first.colour} one or the {second.colour} one?"
                cands.append(QA("compare", q, big.colour, f"The {big.name} is bigger."))
            if a.colour == b.colour:
                q = f"Which {a.colour} shape is bigger, the {first.shape} or the {second.shape}?"
                cands.append(QA("compare", q, big.shape, f"The {big.name} is bigger."))
    return _pick(rng, cands)


# the image tasks; eval cycles through all of them with one-word answers
IMAGE_TASKS: dict[str, Callable[[Scene, np.random.Generator], QA | None]] = {
    "colour": qa_colour,
    "shape": qa_shape,
    "count": qa_count,
    "position": qa_position,
    "exist": qa_exist,
    "size": qa_size,
    "compare": qa_compare,
}
# sampling weights in fine-tuning: the tasks that need selective attention get more data. (Giving
# colour, the first task a from-scratch toy VLM learns to read from the image, 2.5x the share did
# not bring that onset forward: it stayed between fine-tuning steps 500 and 750 of batch 16.)
TASK_WEIGHTS = {"colour": 1.0, "shape": 1.0, "count": 1.5, "position": 1.5, "exist": 1.5, "size": 0.7, "compare": 0.8}


def random_qa(scene: Scene, rng: np.random.Generator, one_word_only: bool = False) -> QA:
    """A QA of a weighted-random task that has a question for this scene."""
    names = list(IMAGE_TASKS)
    w = np.array([TASK_WEIGHTS[n] for n in names])
    for _ in range(20):
        task = names[int(rng.choice(len(names), p=w / w.sum()))]
        qa = IMAGE_TASKS[task](scene, rng)
        if qa is not None and (qa.word is not None or not one_word_only):
            return qa
    return qa_count(scene, rng)  # always has a question (and a one-word answer)


_WORDS = list(COLOURS) + list(SHAPES) + ["image", "picture", "bigger", "answer", "model", "student", "teacher"]


def text_qa(rng: np.random.Generator) -> QA:
    """An image-free question (arithmetic, spelling): keeps plain language modelling in the mix."""
    kind = int(rng.integers(4))
    if kind == 0:
        a, b = (int(x) for x in rng.integers(0, 10, size=2))
        return QA("arithmetic", f"What is {a} plus {b}?", str(a + b), f"{a} plus {b} is {a + b}.")
    if kind == 1:
        a, b = sorted((int(x) for x in rng.integers(0, 10, size=2)), reverse=True)
        return QA("arithmetic", f"What is {a} minus {b}?", str(a - b), f"{a} minus {b} is {a - b}.")
    w = _WORDS[int(rng.integers(len(_WORDS)))]
    if kind == 2:
        return QA("spell", f"Spell the word {w}.", None, " ".join(w))
    return QA("spell", f"How many letters are in the word {w}?", str(len(w)), f"The word {w} has {len(w)} letters.")
