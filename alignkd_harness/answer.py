"""A MobileVLM checkpoint answering benchmark-harness requests, independent of any harness.

A harness hands over, per question, a context string (the question text as the benchmark writes
it), the question's images and its generation kwargs. Here the context becomes the one human turn
of a LLaVA conversation (with "<image>\\n" in front when there is an image and the context has no
placeholder of its own), rendered with the checkpoint's conversation template (v1, MobileVLM's)
and answered greedily by `evaluation.heldout.generate_answers`: the path of `alignkd eval`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from evaluation.heldout import generate_answers
from pipeline.constants import IMAGE_PLACEHOLDER
from pipeline.models import MobileVLM
from pipeline.tokenizer_load import has_tokenizer, load_tokenizer


class HarnessRequestError(ValueError):
    """A request this model cannot answer as asked (sampling, several images, ...)."""


@dataclass
class Request:
    """One question as a harness asks it: `images` are PIL images (0 or 1 for MobileVLM)."""

    context: str
    images: list = field(default_factory=list)
    gen_kwargs: dict = field(default_factory=dict)
    name: str = ""  # for error messages: "<task>/<split>/<doc id>"


class Answerer:
    """Loads a checkpoint dir (and its tokenizer) once; `answer` answers a list of requests."""

    def __init__(self, pretrained: str | Path, tokenizer: str | Path | None = None, template: str = "v1",
                 batch_size: int = 32, max_new_tokens: int = 16, device: str | None = None,
                 dtype: str = "float32") -> None:
        pretrained = Path(pretrained)
        tok_dir = Path(tokenizer) if tokenizer else pretrained
        if not has_tokenizer(tok_dir):
            raise ValueError(f"{tok_dir}: no tokenizer files; pass tokenizer=<dir> in --model_args "
                             "(the workflow's data.tokenizer)")
        self.tokenizer = load_tokenizer(tok_dir)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = MobileVLM.from_pretrained(pretrained, dtype=dtype, device=device)
        self.template, self.batch_size, self.max_new_tokens = template, int(batch_size), int(max_new_tokens)

    def answer(self, requests: list[Request], progress: bool = True) -> list[str]:
        """Greedy answers in request order. Requests are grouped by max_new_tokens (one
        `generate_answers` call per group, order kept inside it); each answer is cut at the first
        of the request's `until` strings, as harnesses define generation."""
        settings = [self._settings(r) for r in requests]
        out: list[str | None] = [None] * len(requests)
        for max_new in sorted({s[0] for s in settings}):
            idx = [i for i, s in enumerate(settings) if s[0] == max_new]
            prompts = [(conversation(requests[i]), requests[i].images[0] if requests[i].images else None) for i in idx]
            texts = generate_answers(self.model, self.tokenizer, prompts, self.template, self.batch_size, max_new,
                                     progress)
            for i, text in zip(idx, texts):
                out[i] = cut_at(text, settings[i][1])
        return [t if t is not None else "" for t in out]

    def _settings(self, r: Request) -> tuple[int, list[str]]:
        g = dict(r.gen_kwargs or {})
        if g.get("do_sample") or float(g.get("temperature") or 0) > 0 or int(g.get("num_beams") or 1) > 1:
            asked = {k: g[k] for k in ("do_sample", "temperature", "num_beams") if k in g}
            raise HarnessRequestError(f"{r.name}: asks for sampling or beam search ({asked}); "
                                      "alignkd's MobileVLM decodes greedily only")
        if len(r.images) > 1:
            raise HarnessRequestError(f"{r.name}: {len(r.images)} images; MobileVLM takes one image per question")
        until = g.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        return int(g.get("max_new_tokens") or self.max_new_tokens), [u for u in until if u]


def conversation(r: Request) -> list[dict]:
    """The request as a one-turn LLaVA conversation (the template moves "<image>" to the front)."""
    text = r.context
    if r.images and IMAGE_PLACEHOLDER not in text:
        text = f"{IMAGE_PLACEHOLDER}\n{text}"
    elif not r.images and IMAGE_PLACEHOLDER in text:
        raise HarnessRequestError(f"{r.name}: the context has {IMAGE_PLACEHOLDER} but the request carries no image")
    return [{"from": "human", "value": text}]


def cut_at(text: str, until: list[str]) -> str:
    """`text` up to the first occurrence of any stop string (stripped)."""
    for u in until:
        text = text.split(u, 1)[0]
    return text.strip()
