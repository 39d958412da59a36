"""Splice projector tokens into the text embeddings at the IMAGE_TOKEN_INDEX (-200) position.

Input: input_ids [B, L] right-padded (attention_mask a prefix of ones per row), at most one -200
per row; images [B, 3, S, S] indexed by batch row (rows without -200 ignored). Output, right-padded
in embedded coordinates: embeds [B, L_emb, D], attention_mask [B, L_emb], labels [B, L_emb]
(vision positions -100), vision_tokens [B, |V|, D] (zeros on text-only rows) and one
`SampleIndex` per row from `pipeline.positions.sample_index`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from pipeline.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from pipeline.positions import SampleIndex, sample_index

if TYPE_CHECKING:
    from pipeline.models.mobilevlm import MobileVLM


@dataclass
class Embedded:
    embeds: torch.Tensor  # [B, L_emb, D]
    attention_mask: torch.Tensor  # [B, L_emb] long, right-padded
    labels: torch.Tensor | None  # [B, L_emb]
    vision_tokens: torch.Tensor | None  # [B, |V|, D]
    index: list[SampleIndex]


def _check_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Validates shapes/padding; returns per-row lengths [B]."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
    if attention_mask.shape != input_ids.shape or (labels is not None and labels.shape != input_ids.shape):
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)}, attention_mask {tuple(attention_mask.shape)} and labels "
            f"{None if labels is None else tuple(labels.shape)} must have the same shape"
        )
    lengths = attention_mask.long().sum(1)
    prefix = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] < lengths[:, None]
    if not bool((attention_mask.bool() == prefix).all()):
        bad = (attention_mask.bool() != prefix).any(1).nonzero().flatten().tolist()
        raise ValueError(f"rows {bad} are not right-padded: attention_mask must be 1...1 0...0 per row")
    is_img = input_ids == IMAGE_TOKEN_INDEX
    if bool((is_img & ~prefix).any()):
        raise ValueError("an image placeholder (-200) sits in the padding of a row")
    n = is_img.sum(1)
    if bool((n > 1).any()):
        raise ValueError(f"rows {(n > 1).nonzero().flatten().tolist()} hold more than one -200 placeholder")
    return lengths


def embed_inputs(model: "MobileVLM", input_ids: torch.Tensor, images: torch.Tensor | None,
                 attention_mask: torch.Tensor | None, labels: torch.Tensor | None) -> Embedded:
    dev = model.device
    input_ids = input_ids.to(dev)
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(dev)
    labels = None if labels is None else labels.to(dev)
    lengths = _check_inputs(input_ids, attention_mask, labels)
    img_pos = (input_ids == IMAGE_TOKEN_INDEX).long().argmax(1)  # [B] (0 where none)
    has_img = (input_ids == IMAGE_TOKEN_INDEX).any(1)  # [B]
    nv = model.num_vision_tokens
    b = input_ids.shape[0]

    vision = None
    if bool(has_img.any()):
        if images is None or images.shape[0] != b:
            raise ValueError(
                f"input_ids hold -200 placeholders, so images must be [B={b}, 3, S, S]; got "
                f"{None if images is None else tuple(images.shape)}"
            )
        rows = has_img.nonzero().flatten()
        vt = model.encode_images(images.to(dev)[rows])  # [n_img, |V|, D]
        vision = vt.new_zeros(b, nv, vt.shape[-1]).index_copy(0, rows, vt)  # [B, |V|, D]

    tok = model.model.embed_tokens(input_ids.clamp(min=0))  # [B, L, D]; -200 rows replaced below
    ids_np, len_np = input_ids.cpu().numpy(), lengths.cpu().tolist()
    lab_np = None if labels is None else labels.cpu().numpy()
    emb_rows, lab_rows, index = [], [], []
    for i in range(b):
        n = len_np[i]
        lab_i = lab_np[i, :n] if lab_np is not None else np.full(n, IGNORE_INDEX)
        index.append(sample_index(ids_np[i, :n], lab_i, nv))
        if bool(has_img[i]):
            p = int(img_pos[i])
            emb_rows.append(torch.cat([tok[i, :p], vision[i], tok[i, p + 1 : n]]))
            if labels is not None:
                fill = labels.new_full((nv,), IGNORE_INDEX)
                lab_rows.append(torch.cat([labels[i, :p], fill, labels[i, p + 1 : n]]))
        else:
            emb_rows.append(tok[i, :n])
            if labels is not None:
                lab_rows.append(labels[i, :n])
    embeds = pad_sequence(emb_rows, batch_first=True)  # [B, L_emb, D], zeros in the padding
    l_emb = embeds.shape[1]
    emb_len = torch.tensor([si.length for si in index], device=dev)
    am = (torch.arange(l_emb, device=dev)[None, :] < emb_len[:, None]).long()
    lab = pad_sequence(lab_rows, batch_first=True, padding_value=IGNORE_INDEX) if labels is not None else None
    return Embedded(embeds, am, lab, vision, index)
