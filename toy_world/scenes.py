"""Scenes of the toy world: 1–4 coloured shapes in the cells of a 3×3 grid, plus the words that
describe them.

A scene is pure data (what is where); `render.py` draws it and `tasks.py` asks about it, so
every answer is computed from the same ground truth that produced the pixels. Rules that keep
questions exact:
* one object per grid cell, so "where" has one answer (row: top/middle/bottom, column:
  left/center/right) and objects never overlap;
* no two objects share (colour, shape), so "the red circle" always names one object;
* sizes are two well-separated radii (big ≈ 0.42 of a cell, small ≈ 0.22), so "big or small"
  is never borderline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

GRID = 3
SHAPES = ("circle", "square", "triangle")
# six hues far apart in RGB, all readable on the grey backgrounds below
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 40),
    "purple": (150, 60, 190),
    "cyan": (40, 205, 215),
}
SIZES = ("big", "small")
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
MAX_OBJECTS = 4
# P(1..4 objects). Skewed to few objects on purpose: on a one-object image "what colour / shape /
# size" is answered by the image as a whole (a mean over the vision tokens suffices), the
# strongest and earliest grounding signal a from-scratch toy model gets; binding, position,
# counting and comparing over 2-4 objects need selective attention and come later.
N_OBJECTS_P = (0.4, 0.3, 0.2, 0.1)
TEXTURES = ("plain", "striped", "speckled")


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    row: int  # 0..GRID-1, top to bottom
    col: int  # 0..GRID-1, left to right
    cx: float  # centre in pixels (x right, y down)
    cy: float
    r: float  # half-extent in pixels

    @property
    def name(self) -> str:  # unique in its scene by construction
        return f"{self.colour} {self.shape}"

    @property
    def where(self) -> str:
        return cell_phrase(self.row, self.col)


@dataclass(frozen=True)
class Scene:
    image: str  # file name relative to the image root
    background: int  # grey level 0..255
    texture: str  # one of TEXTURES (a distractor: never asked about)
    objects: tuple[Obj, ...]  # reading order (row, then column)

    def to_json(self) -> dict:
        return {
            "image": self.image,
            "background": self.background,
            "texture": self.texture,
            "objects": [asdict(o) for o in self.objects],
        }

    @classmethod
    def from_json(cls, d: dict) -> "Scene":
        """Inverse of `to_json` (a world's scenes.json values)."""
        return cls(d["image"], d["background"], d["texture"], tuple(Obj(**o) for o in d["objects"]))


def cell_phrase(row: int, col: int) -> str:
    """'top left', 'top', 'left', 'center', ... (the middle row/column is left implicit)."""
    if row == 1 and col == 1:
        return "center"
    if row == 1:
        return COLS[col]
    if col == 1:
        return ROWS[row]
    return f"{ROWS[row]} {COLS[col]}"


def sample_scene(rng: np.random.Generator, image: str, image_size: int) -> Scene:
    """One random scene; every choice comes from `rng` so a seed fixes the scene."""
    n = 1 + int(rng.choice(MAX_OBJECTS, p=N_OBJECTS_P))
    cells = rng.choice(GRID * GRID, size=n, replace=False)
    # distinct (colour, shape) pairs; colours repeat on purpose (e.g. a red circle and a red
    # square) so that shape and colour must be bound to answer "is there a red square?"
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    picks = rng.choice(len(pairs), size=n, replace=False)
    cell = image_size / GRID
    objs = []
    for k in range(n):
        row, col = divmod(int(cells[k]), GRID)
        colour, shape = pairs[int(picks[k])]
        size = SIZES[int(rng.integers(2))]
        r = cell * (0.42 if size == "big" else 0.22)
        slack = max(cell / 2 - r - 1.0, 0.0)  # jitter that keeps the shape inside its cell
        cx = (col + 0.5) * cell + float(rng.uniform(-slack, slack))
        cy = (row + 0.5) * cell + float(rng.uniform(-slack, slack))
        objs.append(Obj(shape, colour, size, row, col, round(cx, 2), round(cy, 2), round(r, 2)))
    objs.sort(key=lambda o: (o.row, o.col))
    # dark or light grey, never close to a shape colour's brightness extremes
    background = int(rng.choice([int(rng.integers(25, 70)), int(rng.integers(175, 215))]))
    texture = TEXTURES[int(rng.choice(3, p=[0.6, 0.2, 0.2]))]
    return Scene(image=image, background=background, texture=texture, objects=tuple(objs))


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption naming every object with its size, colour, shape and place."""
    parts = [f"a {o.size} {o.colour} {o.shape} {at_phrase(o.where)}" for o in scene.objects]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    ground = "plain" if scene.texture == "plain" else scene.texture
    opener = ("", "The image shows ", "There is ")[int(rng.integers(3))]
    text = f"{opener}{body} on a {ground} background."
    return text[0].upper() + text[1:]


def detailed_description(scene: Scene) -> str:
    """A long, fully grounded description (the answer of 'describe in detail' requests)."""
    n = len(scene.objects)
    head = f"There {'is one shape' if n == 1 else f'are {n} shapes'} in the image."
    body = " ".join(f"The {o.name} is {o.size} and it is {at_phrase(o.where)}." for o in scene.objects)
    return f"{head} {body}"


def at_phrase(where: str) -> str:
    """'in the center', 'on the left', 'at the top right', ..."""
    if where == "center":
        return "in the center"
    return f"on the {where}" if where in ("left", "right") else f"at the {where}"
