"""Toy world content without disk or models: scenes, rendering, QA answers against ground truth,
Short/Long turn fitting. Fast (no tokenizer, no torch)."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from toy_world.records import Draft, draft, fit_turns, prefixes
from toy_world.render import png_bytes, render
from toy_world.scenes import COLOURS, GRID, SHAPES, Scene, sample_scene
from toy_world.tasks import IMAGE_TASKS, ONE_WORD, random_qa

ROWS, COLS = ["top", "middle", "bottom"], ["left", "center", "right"]


def _place(phrase: str) -> tuple[int, int]:
    """Independent parse of 'in the center' / 'on the left' / 'at the top right' -> (row, col)."""
    words = phrase.split()[2:]  # drop 'in the' / 'on the' / 'at the'
    row = next((ROWS.index(w) for w in words if w in ROWS), 1)
    col = next((COLS.index(w) for w in words if w in COLS), 1)
    return row, col


def oracle(question: str, scene: dict) -> str | None:
    """The one-word answer recomputed from a scene's JSON ground truth (None: not understood)."""
    objs = scene["objects"]
    q = question.removesuffix(ONE_WORD).strip()
    named = lambda c, s: [o for o in objs if o["colour"] == c and o["shape"] == s]
    at = lambda p: [o for o in objs if (o["row"], o["col"]) == _place(p)]
    if m := re.fullmatch(r"What colour is the (circle|square|triangle)\?", q):
        (o,) = [o for o in objs if o["shape"] == m[1]]
        return o["colour"]
    if m := re.fullmatch(r"What colour is the shape ((?:in|on|at) the [a-z ]+)\?", q):
        (o,) = at(m[1])
        return o["colour"]
    if m := re.fullmatch(r"What shape is the (\w+) object\?", q):
        (o,) = [o for o in objs if o["colour"] == m[1]]
        return o["shape"]
    if m := re.fullmatch(r"What shape is ((?:in|on|at) the [a-z ]+)\?", q):
        (o,) = at(m[1])
        return o["shape"]
    if q == "How many shapes are there?":
        return str(len(objs))
    if m := re.fullmatch(r"How many (circle|square|triangle)s are there\?", q):
        return str(sum(o["shape"] == m[1] for o in objs))
    if m := re.fullmatch(r"How many (big|small) shapes are there\?", q):
        return str(sum(o["size"] == m[1] for o in objs))
    if m := re.fullmatch(r"Is the (\w+) (\w+) on the left, in the center or on the right\?", q):
        (o,) = named(m[1], m[2])
        return COLS[o["col"]]
    if m := re.fullmatch(r"Is the (\w+) (\w+) at the top, in the middle or at the bottom\?", q):
        (o,) = named(m[1], m[2])
        return ROWS[o["row"]]
    if m := re.fullmatch(r"Is there a (\w+) (\w+)\?", q):
        return "yes" if named(m[1], m[2]) else "no"
    if m := re.fullmatch(r"Is the (\w+) (\w+) big or small\?", q):
        (o,) = named(m[1], m[2])
        return o["size"]
    if m := re.fullmatch(r"Which (circle|square|triangle) is bigger, the (\w+) one or the (\w+) one\?", q):
        a, b = named(m[2], m[1]) + named(m[3], m[1])
        assert a["size"] != b["size"]
        return (a if a["size"] == "big" else b)["colour"]
    if m := re.fullmatch(r"Which (\w+) shape is bigger, the (\w+) or the (\w+)\?", q):
        a, b = named(m[1], m[2]) + named(m[1], m[3])
        assert a["size"] != b["size"]
        return (a if a["size"] == "big" else b)["shape"]
    return None


def _scenes(n: int, seed: int = 0) -> list[Scene]:
    return [sample_scene(np.random.default_rng([seed, i]), f"s{i}.png", 64) for i in range(n)]


def test_scenes_respect_the_rules_that_make_answers_exact():
    for s in _scenes(300):
        cells = [(o.row, o.col) for o in s.objects]
        assert 1 <= len(s.objects) <= 4 and len(set(cells)) == len(cells)
        assert len({o.name for o in s.objects}) == len(s.objects)  # (colour, shape) unique
        for o in s.objects:  # the shape lies inside its own grid cell
            cell = 64 / GRID
            assert o.col * cell <= o.cx - o.r and o.cx + o.r <= (o.col + 1) * cell
            assert o.row * cell <= o.cy - o.r and o.cy + o.r <= (o.row + 1) * cell


def test_render_is_deterministic_and_draws_the_objects():
    s = _scenes(1, seed=3)[0]
    a = png_bytes(render(s, 64, np.random.default_rng(1)))
    assert a == png_bytes(render(s, 64, np.random.default_rng(1)))
    img = np.asarray(render(s, 64, np.random.default_rng(1)))
    for o in s.objects:  # the centre pixel has the object's colour
        assert tuple(img[int(o.cy), int(o.cx)]) == COLOURS[o.colour]


@pytest.mark.parametrize("task", list(IMAGE_TASKS))
def test_every_one_word_answer_matches_the_ground_truth(task):
    rng = np.random.default_rng(7)
    asked = 0
    for s in _scenes(200, seed=11):
        qa = IMAGE_TASKS[task](s, rng)
        if qa is None or qa.word is None:
            continue
        asked += 1
        assert oracle(qa.question, s.to_json()) == qa.word, (qa, s)
    assert asked > 20


def test_answers_are_balanced_so_the_image_matters():
    rng = np.random.default_rng(0)
    scenes = _scenes(600, seed=5)
    for task, classes in (("colour", len(COLOURS)), ("shape", len(SHAPES)), ("exist", 2), ("size", 2)):
        counts = Counter(qa.word for s in scenes if (qa := IMAGE_TASKS[task](s, rng)) and qa.word)
        assert len(counts) == classes
        assert max(counts.values()) / sum(counts.values()) < 1.6 / classes, (task, counts)


def test_fit_turns_puts_drafts_in_their_band():
    rng = np.random.default_rng(0)
    s = _scenes(1, seed=2)[0]
    d = draft("x", "long", s, rng)
    lens = [100 + 40 * k for k in range(len(prefixes(d)))]  # lengths of prefixes min_turns..max_turns
    k = fit_turns(d, lens, 160, 320)
    assert 160 < lens[k - d.min_turns] <= 320 and (k == d.min_turns or lens[k - d.min_turns - 1] <= 160)
    m = Draft("m", "multi", "short", "s.png", [("q", "a")] * 5, 0, 2, 5)
    assert fit_turns(m, [100, 150, 170, 200], 160, 320) == 3


def test_drafts_are_valid_conversations():
    rng = np.random.default_rng(1)
    for i, s in enumerate(_scenes(100)):
        for kind in ("single", "multi", "long", "text"):
            d = draft(f"{kind}{i}", kind, None if kind == "text" else s, rng)
            for conv in prefixes(d):
                roles = [t["from"] for t in conv]
                assert roles == ["human", "gpt"] * (len(conv) // 2)
                n_img = sum(t["value"].count("<image>") for t in conv)
                assert n_img == (0 if kind == "text" else 1)
                assert all(t["value"].strip() for t in conv)
        qa = random_qa(s, rng, one_word_only=True)
        assert qa.word is not None
