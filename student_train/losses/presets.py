"""Named loss configurations (the paper's ablations) and the resolution of `LossConfig`.

    L = sup·L_sup + rkl·L_rkl + attn·Σ_{(layer, block)} L_attn + focus·L_focus + all_tokens·L_all

L_v = L_focus + α·L_all with α = 0.1 (paper §4.1) is the weights focus = 1, all_tokens = 0.1.
(The public code's other forms: `L_all + 0.1·L_focus` is focus = 0.1, all_tokens = 1; the
unweighted sum is all_tokens = 1.) Table 3: sft → rkl → attn → focus → all (= alignkd);
Table 4 swaps the distilled attention block (vv, tt, full) or adds the last layer (last).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pipeline.workflow import LossConfig
from student_train.adapters import DIRECTIONS
from student_train.losses.rkl import TAIL_MODELS

TERMS = ("sup", "rkl", "attn", "focus", "all_tokens")
BLOCKS = ("tv", "vv", "tt", "full")
LAYERS = ("first", "last")


@dataclass(frozen=True)
class LossWeights:
    sup: float = 1.0
    rkl: float = 0.0
    attn: float = 0.0
    focus: float = 0.0
    all_tokens: float = 0.0

    def active(self) -> tuple[str, ...]:
        """Names of the terms with a non-zero weight, in TERMS order."""
        return tuple(t for t in TERMS if getattr(self, t) != 0.0)


_ALIGNKD = LossWeights(sup=1.0, rkl=1.0, attn=1.0, focus=1.0, all_tokens=0.1)
# name → (weights, attention block, attention layers)
PRESETS: dict[str, tuple[LossWeights, str, tuple[str, ...]]] = {
    "sft": (LossWeights(), "tv", ("first",)),
    "rkl": (LossWeights(rkl=1.0), "tv", ("first",)),
    "attn": (LossWeights(rkl=1.0, attn=1.0), "tv", ("first",)),
    "focus": (LossWeights(rkl=1.0, attn=1.0, focus=1.0), "tv", ("first",)),
    "all": (_ALIGNKD, "tv", ("first",)),
    "alignkd": (_ALIGNKD, "tv", ("first",)),
    "vv": (_ALIGNKD, "vv", ("first",)),
    "tt": (_ALIGNKD, "tt", ("first",)),
    "full": (_ALIGNKD, "full", ("first",)),
    "last": (_ALIGNKD, "tv", ("first", "last")),
}


@dataclass(frozen=True)
class TeacherTargets:
    """What a resolved loss reads from the teacher (so the recipe checks the cache has it and
    loads nothing else). attn: the (layer, block) maps; logits: the output distribution (sparse
    top-k from the cache, or dense in online mode)."""

    attn: tuple[tuple[str, str], ...]
    focus: bool
    vision_tokens: bool
    logits: bool


@dataclass(frozen=True)
class ResolvedLoss:
    preset: str
    weights: LossWeights
    attn_block: str
    attn_layers: tuple[str, ...]
    adapter_direction: str
    tail_model: str

    @property
    def active(self) -> tuple[str, ...]:
        return self.weights.active()

    @property
    def attn_keys(self) -> tuple[tuple[str, str], ...]:
        """(layer, block) pairs distilled; () when the attention term is off. The student's
        `CaptureSpec(layers=…, blocks=…)` must capture exactly these."""
        return tuple((layer, self.attn_block) for layer in self.attn_layers) if self.weights.attn else ()

    @property
    def uses_vision_tokens(self) -> bool:
        return bool(self.weights.focus or self.weights.all_tokens)

    def teacher_targets(self) -> TeacherTargets:
        w = self.weights
        return TeacherTargets(attn=self.attn_keys, focus=bool(w.focus),
                              vision_tokens=self.uses_vision_tokens, logits=bool(w.rkl))


class LossConfigError(ValueError):
    """train.loss is invalid; the message lists every problem."""


def resolve_loss(cfg: LossConfig | None = None) -> ResolvedLoss:
    """Preset + explicit overrides → ResolvedLoss; raise LossConfigError listing every problem."""
    cfg = cfg or LossConfig()
    errors: list[str] = []
    if cfg.preset not in PRESETS:
        errors.append(f"train.loss.preset: unknown preset {cfg.preset!r} (known: {', '.join(PRESETS)})")
        weights, block, layers = PRESETS["alignkd"]
    else:
        weights, block, layers = PRESETS[cfg.preset]
    over = {t: float(getattr(cfg, t)) for t in TERMS if getattr(cfg, t) is not None}
    for t, v in over.items():
        if not v >= 0.0 or v == float("inf"):
            errors.append(f"train.loss.{t}: a weight must be finite and ≥ 0, got {v}")
    weights = dataclasses.replace(weights, **over)
    if not (0.0 < cfg.attn_scale < float("inf")):
        errors.append(f"train.loss.attn_scale: must be finite and > 0, got {cfg.attn_scale}")
    else:  # scales whatever attention weight the preset (or an override) gives; 0 stays 0
        weights = dataclasses.replace(weights, attn=weights.attn * cfg.attn_scale)
    if cfg.attn_block is not None:
        block = cfg.attn_block
    if block not in BLOCKS:
        errors.append(f"train.loss.attn_block: {block!r} is not one of {', '.join(BLOCKS)}")
    if cfg.attn_layers is not None:
        layers = tuple(cfg.attn_layers.split("+"))
        if not layers or any(l not in LAYERS for l in layers) or len(set(layers)) != len(layers):
            errors.append(f"train.loss.attn_layers: {cfg.attn_layers!r}; use 'first', 'last' or 'first+last'")
    if cfg.adapter_direction not in DIRECTIONS:
        errors.append(f"train.loss.adapter_direction: {cfg.adapter_direction!r} is not one of {', '.join(DIRECTIONS)}")
    if cfg.tail_model not in TAIL_MODELS:
        errors.append(f"train.loss.tail_model: {cfg.tail_model!r} is not one of {', '.join(TAIL_MODELS)}")
    if not weights.active():
        errors.append("train.loss: every weight is 0; nothing to train (set e.g. `sup: 1.0`)")
    if errors:
        raise LossConfigError(f"{len(errors)} problem(s) in train.loss:\n  - " + "\n  - ".join(errors))
    return ResolvedLoss(preset=cfg.preset, weights=weights, attn_block=block, attn_layers=layers,
                        adapter_direction=cfg.adapter_direction, tail_model=cfg.tail_model)
