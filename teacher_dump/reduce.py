"""One batch's `forward_align` output → per-sample cache targets, reduced on the teacher's device.

Only what the store keeps leaves the device: the per-head attention blocks (already sliced to
[H, r, c] by the capture), the focus indices, the top-k log-probs at the response positions and
the projector tokens of the images this unit owns. The full logits [B, L_emb, vocab] and the
full attention never reach the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cache_schema import SampleTargets
from pipeline.models import AlignOutput
from pipeline.positions import SampleIndex
from pipeline.targets import focus_indices, sparse_topk

AttnKey = tuple[str, str]


@dataclass(frozen=True)
class ReduceSpec:
    """What to keep per sample (from the workflow's `cache:` section and the store's encoding).

    attn_keys: (layer, block) pairs the store holds; ("first", "tv") is always computed for focus.
    wire_attn / wire_logprobs / wire_vision: the dtype each travels device → host in. A 16-bit
    store encoding lets the copy be 16-bit too (the writer's float32 → f16 cast of an
    already-f16 value is exact, so the stored bytes are the same as copying fp32).
    """

    attn_keys: tuple[AttnKey, ...]
    focus_k: int
    logits_topk: int
    wire_attn: torch.dtype = torch.float32
    wire_logprobs: torch.dtype = torch.float32
    wire_vision: torch.dtype = torch.float32
    vision_tokens: bool = True  # False: the store recomputes them (only the image hash is written)


@dataclass
class BatchMeta:
    """Host-side identity of a batch's samples, aligned with the model inputs' rows."""

    sample_ids: list[str]
    token_hashes: list[str]
    image_hashes: list[str]  # "" for text-only samples
    emit_image: list[bool]  # write this row's projector tokens (the unit owns the image, first use)


def reduce_batch(al: AlignOutput, index: list[SampleIndex], meta: BatchMeta, spec: ReduceSpec) -> tuple[list[SampleTargets], list[tuple[str, np.ndarray]]]:
    """Per-sample targets and the (image_hash, tokens [|V|, D_t] float32) pairs to write.

    index: one SampleIndex per row built from the real labels (R); `al` may come from a forward
    without labels (then its own index has no response positions).
    """
    # one log-softmax/top-k over every response row of the batch: [Σ|R|, vocab] -> [Σ|R|, k]
    dev_ = al.logits.device
    rows = torch.as_tensor(np.concatenate([np.full(len(si.resp), i) for i, si in enumerate(index)]), device=dev_)
    cols = torch.as_tensor(np.concatenate([si.resp for si in index]), device=dev_)
    sd = sparse_topk(al.logits[rows.long(), cols.long()], spec.logits_topk)
    n_resp = [len(si.resp) for si in index]
    ids, lps, tails = sd.ids.split(n_resp), sd.logprobs.to(spec.wire_logprobs).split(n_resp), sd.tail_logmass.split(n_resp)

    dev: list[dict[str, object]] = []  # per sample: name -> device tensor, still on the device
    for i, si in enumerate(index):
        attn = {key: al.attn[key][i].to(spec.wire_attn) for key in spec.attn_keys}  # [H, r, c]
        tv = al.attn[("first", "tv")][i]  # [H, |T|, |V|] fp32
        focus = focus_indices(tv, spec.focus_k) if si.has_image else tv.new_zeros(0, dtype=torch.long)
        d = {"attn": attn, "focus": focus, "ids": ids[i], "lp": lps[i], "tail": tails[i]}
        if meta.emit_image[i] and al.vision_tokens is not None:
            # [|V|, D_t]; a recompute store takes the hash alone: nothing crosses to the host
            d["vis"] = al.vision_tokens[i].to(spec.wire_vision) if spec.vision_tokens else None
        dev.append(d)
    host = _to_host(dev)
    samples, images = [], []
    for i, (si, d) in enumerate(zip(index, host)):
        samples.append(
            SampleTargets(
                sample_id=meta.sample_ids[i],
                token_hash=meta.token_hashes[i],
                image_hash=meta.image_hashes[i] or None,
                n_text=si.n_text_after,
                attn={k: _f32(v) for k, v in d["attn"].items()},
                focus=d["focus"].numpy(),
                topk_ids=d["ids"].numpy(),
                topk_logprobs=_f32(d["lp"]),
                tail_logmass=_f32(d["tail"]),
            )
        )
        if "vis" in d:
            images.append((meta.image_hashes[i], None if d["vis"] is None else _f32(d["vis"])))
    return samples, images


def _to_host(tree: object) -> object:
    """Copy every tensor of a nested dict/list to the host with one synchronisation at the end."""
    def copy(x: object) -> object:
        if isinstance(x, torch.Tensor):
            return x.detach().to("cpu", non_blocking=x.is_cuda)
        if isinstance(x, dict):
            return {k: copy(v) for k, v in x.items()}
        if isinstance(x, list):
            return [copy(v) for v in x]
        return x

    out = copy(tree)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()  # non_blocking copies must land before numpy reads them
    return out


def _f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.float().numpy())
