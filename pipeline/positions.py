"""Index sets the losses need, in *embedded* coordinates (after the image placeholder has been
expanded into its vision tokens). One definition, used by the data builder, the teacher dump and
the student, so that the three agree position by position.

For a sample with token ids `ids` (one IMAGE_TOKEN_INDEX at most) and HF-style labels aligned
with `ids` (IGNORE_INDEX where unsupervised):

  V    = [v_start, v_start + n_vision)            vision positions (empty for text-only samples)
  T    = [v_start + n_vision, length)              text after the image: the only text queries that
                                                   can attend to V under the causal mask
  R    = logit positions p with labels_emb[p + 1] != IGNORE_INDEX: the logits at p predict a
         supervised token (the usual shift); R is what the reverse KL and the cached top-k cover.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX


@dataclass(frozen=True)
class SampleIndex:
    length: int  # embedded length L_emb (text tokens + vision tokens)
    v_start: int  # first vision position (0 with n_vision == 0 for text-only samples)
    n_vision: int  # |V|
    resp: np.ndarray  # [|R|] int64 logit positions, ascending

    @property
    def t_start(self) -> int:
        return self.v_start + self.n_vision if self.n_vision else self.length

    @property
    def n_text_after(self) -> int:  # |T|
        return self.length - self.t_start

    @property
    def has_image(self) -> bool:
        return self.n_vision > 0


def sample_index(input_ids: "list[int] | np.ndarray", labels: "list[int] | np.ndarray", n_vision: int) -> SampleIndex:
    """Index sets of one (unpadded) sample whose image contributes `n_vision` tokens."""
    ids = np.asarray(input_ids, dtype=np.int64)
    lab = np.asarray(labels, dtype=np.int64)
    if ids.shape != lab.shape:
        raise ValueError(f"input_ids and labels differ in length: {ids.shape} vs {lab.shape}")
    img = np.flatnonzero(ids == IMAGE_TOKEN_INDEX)
    if len(img) > 1:
        raise ValueError(f"a sample may hold one image placeholder, found {len(img)}")
    if len(img) == 1:
        p = int(img[0])
        lab_emb = np.concatenate([lab[:p], np.full(n_vision, IGNORE_INDEX), lab[p + 1 :]])
        v_start, nv = p, n_vision
    else:
        lab_emb, v_start, nv = lab, 0, 0
    resp = np.flatnonzero(lab_emb[1:] != IGNORE_INDEX).astype(np.int64)
    return SampleIndex(length=len(lab_emb), v_start=v_start, n_vision=nv, resp=resp)
