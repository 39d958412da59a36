"""Attention-probability capture for the layers the losses read (layer 0, optionally the last).

How: the LLM runs under our registered attention implementation `alignkd_sdpa` (or
`alignkd_eager`), which is plain SDPA (eager) for every layer. A layer whose attention module
carries a `_alignkd_capture` recorder (set only for the duration of `forward_align`, and only on
the requested layers) hands its post-RoPE q/k and mask to the recorder; after the forward, the
recorder computes

    P = softmax(q k^T * scale + causal/padding mask)   in fp32, over all keys (eager semantics)

in chunks of query rows, and keeps only the per-sample blocks asked for. The layer's output still
comes from SDPA, which equals P @ v; gradients of a loss on the captured blocks flow through q and k
(into q_proj/k_proj, and through the hidden states into the projector), so no layer needs
`output_attentions=True` or eager attention. (Equivalent to using P for the output, without
materialising P in the layer; and since nothing extra is saved inside the layer, activation
checkpointing recomputes it consistently.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
from transformers.models.llama.modeling_llama import eager_attention_forward

from pipeline.positions import SampleIndex

LAYERS = ("first", "last")
BLOCKS = ("tv", "vv", "tt", "full")
ATTN_SDPA = "alignkd_sdpa"
ATTN_EAGER = "alignkd_eager"
_ROW_CHUNK = 256  # query rows per probability chunk: bounds the [B, H, rows, L] fp32 scratch


@dataclass(frozen=True)
class CaptureSpec:
    """Which attention blocks `forward_align` returns: layers in {"first","last"}, blocks in
    {"tv","vv","tt","full"}; empty layers (or blocks) capture nothing."""

    layers: tuple[str, ...] = ("first",)
    blocks: tuple[str, ...] = ("tv",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "blocks", tuple(self.blocks))
        bad = [x for x in self.layers if x not in LAYERS] + [x for x in self.blocks if x not in BLOCKS]
        if bad:
            raise ValueError(f"CaptureSpec: unknown {bad}; layers take {LAYERS}, blocks take {BLOCKS}")


@dataclass
class AlignOutput:
    """What the alignment losses read from one forward pass (embedded coordinates, right-padded).

    logits [B, L_emb, vocab]; vision_tokens [B, |V|, D] projector output (None without images;
    rows of text-only samples are zeros); attention_mask [B, L_emb]; labels [B, L_emb] or None;
    index: one SampleIndex per sample; attn[(layer, block)] = per-sample list of fp32 tensors
    (tv [H,|T|,|V|], vv [H,|V|,|V|], tt [H,|T|,|T|], full [H,L,L]); hidden_states only when asked;
    loss: shifted CE when labels are given.
    """

    logits: torch.Tensor
    vision_tokens: torch.Tensor | None
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    index: list[SampleIndex]
    attn: dict[tuple[str, str], list[torch.Tensor]] = field(default_factory=dict)
    hidden_states: tuple[torch.Tensor, ...] | None = None
    loss: torch.Tensor | None = None


def _block_ranges(si: SampleIndex, block: str) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of a block in embedded coordinates, for one sample."""
    v0, v1 = si.v_start, si.v_start + si.n_vision
    t0, t1 = si.t_start, si.length
    if not si.has_image and block != "full":
        return 0, 0, 0, 0  # text-only: no V and no T (T is defined as "text after the image")
    return {"tv": (t0, t1, v0, v1), "vv": (v0, v1, v0, v1), "tt": (t0, t1, t0, t1), "full": (0, t1, 0, t1)}[block]


class Recorder:
    """Collects the requested blocks of one layer's probabilities, per sample.

    `record` (inside the layer) only keeps q, k and the mask; `result` (after the LLM forward)
    computes the probabilities. Computing them outside the layer keeps activation checkpointing
    valid: a recomputed layer saves exactly the tensors its first run saved."""

    def __init__(self, names: tuple[str, ...], blocks: tuple[str, ...], index: list[SampleIndex]):
        self.names, self.blocks, self.index = names, blocks, index
        self.inputs: list[tuple] = []

    @property
    def seen(self) -> int:
        return len(self.inputs)

    def record(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, scaling: float) -> None:
        """q [B, H, L, hd], k [B, Hkv, L, hd] (post-RoPE); mask None (causal) / bool / additive [B, 1, L, L]."""
        self.inputs.append((q, k, mask, scaling))

    def result(self) -> dict[tuple[str, str], list[torch.Tensor]]:
        """{(layer name, block): per-sample fp32 probabilities}, computed chunk by chunk of query rows."""
        assert self.seen == 1, f"captured layer ran {self.seen} times"
        q, k, mask, scaling = self.inputs.pop()
        h = q.shape[1]
        if k.shape[1] != h:  # grouped-query attention: expand kv heads like eager does
            k = k.repeat_interleave(h // k.shape[1], dim=1)
        ranges = {(i, blk): _block_ranges(si, blk) for i, si in enumerate(self.index) for blk in self.blocks}
        pieces: dict[tuple[int, str], list[torch.Tensor]] = {key: [] for key in ranges}
        live = [r for r in ranges.values() if r[1] > r[0]]
        lo, hi = (min(r[0] for r in live), max(r[1] for r in live)) if live else (0, 0)
        kt = k.float().transpose(2, 3)  # [B, H, hd, L]
        for r0 in range(lo, hi, _ROW_CHUNK):
            r1 = min(r0 + _ROW_CHUNK, hi)
            s = torch.matmul(q[:, :, r0:r1].float(), kt) * scaling  # [B, H, r, L]
            p = torch.softmax(_apply_mask(s, mask, r0, r1), dim=-1)  # fp32 softmax over all keys
            for (i, blk), (a0, a1, c0, c1) in ranges.items():
                x0, x1 = max(a0, r0), min(a1, r1)
                if x1 > x0:
                    pieces[(i, blk)].append(p[i, :, x0 - r0 : x1 - r0, c0:c1])
        out: dict[tuple[str, str], list[torch.Tensor]] = {}
        for blk in self.blocks:
            rows = []
            for i in range(len(self.index)):
                a0, a1, c0, c1 = ranges[(i, blk)]
                parts = pieces[(i, blk)]
                # contiguous copy: lets each [B, H, r, L] chunk go when no grad holds it
                rows.append(torch.cat(parts, dim=1).contiguous() if parts
                            else torch.zeros(h, a1 - a0, c1 - c0, device=q.device))  # empty block
            for name in self.names:
                out[(name, blk)] = rows
        return out


def _apply_mask(s: torch.Tensor, mask: torch.Tensor | None, r0: int, r1: int) -> torch.Tensor:
    """Mask scores s [B, H, r, L] of query rows r0:r1 like eager attention (min value, no -inf NaNs)."""
    neg = torch.finfo(s.dtype).min
    if mask is None:  # SDPA's causal shortcut: no padding anywhere
        rows = torch.arange(r0, r1, device=s.device)[:, None]
        cols = torch.arange(s.shape[-1], device=s.device)[None, :]
        return s.masked_fill(cols > rows, neg)
    m = mask[:, :, r0:r1, : s.shape[-1]]
    if m.dtype == torch.bool:
        return s.masked_fill(~m, neg)
    return (s + m.float()).clamp(min=neg)


def _hooked(base):
    def attention(module, query, key, value, attention_mask, **kwargs):
        rec = getattr(module, "_alignkd_capture", None)
        if rec is not None:
            rec.record(query, key, attention_mask, kwargs.get("scaling") or module.scaling)
        return base(module, query, key, value, attention_mask, **kwargs)

    return attention


def register_attention() -> None:
    """Register our two implementations (idempotent); they differ from sdpa/eager only while a
    recorder is attached to an attention module."""
    AttentionInterface.register(ATTN_SDPA, _hooked(sdpa_attention_forward))
    AttentionMaskInterface.register(ATTN_SDPA, sdpa_mask)
    AttentionInterface.register(ATTN_EAGER, _hooked(eager_attention_forward))
    AttentionMaskInterface.register(ATTN_EAGER, eager_mask)


register_attention()
