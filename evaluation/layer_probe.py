"""The paper's §3.1 probe: where does cross-modal alignment happen?

For every layer l = 0..N (0 is the input embeddings, l ≥ 1 the output of decoder layer l):
  (a) adjacent-layer similarity: mean over tokens of cos(h_{l}[t], h_{l+1}[t])      (Figure 2a)
  (b) vision–text cosine similarity: cos(mean_{t∈V} h_l[t], mean_{t∉V} h_l[t])      (Figure 2b)
  (c) vision–text Euclidean distance: ‖mean_V h_l − mean_text h_l‖₂                 (Figure 2c)
averaged over samples. Text = every real (unpadded) non-vision position. Only samples with an
image contribute to (b) and (c).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class ProbeResult:
    adjacent_cos: list[float] = field(default_factory=list)  # [N]   pairs (l, l+1), l = 0..N-1
    vt_cos: list[float] = field(default_factory=list)  # [N+1] per layer incl. embeddings
    vt_dist: list[float] = field(default_factory=list)  # [N+1]
    n_samples: int = 0

    def rows(self) -> list[dict]:
        """One CSV row per layer: layer, adjacent_cos (to the next layer), vt_cos, vt_dist."""
        n = len(self.vt_cos)
        return [
            {
                "layer": l,
                "adjacent_cos_to_next": self.adjacent_cos[l] if l < n - 1 else float("nan"),
                "vision_text_cos": self.vt_cos[l],
                "vision_text_dist": self.vt_dist[l],
            }
            for l in range(n)
        ]


class LayerProbe:
    """Accumulates the three curves over batches of `forward_align(..., output_hidden_states=True)`."""

    def __init__(self) -> None:
        self._adj: np.ndarray | None = None
        self._cos: np.ndarray | None = None
        self._dist: np.ndarray | None = None
        self._n_tok_samples = 0
        self._n_img_samples = 0

    @torch.no_grad()
    def add(self, hidden_states: tuple[torch.Tensor, ...], index: list, attention_mask: torch.Tensor) -> None:
        """hidden_states: N+1 tensors [B, L_emb, D]; index: per-sample SampleIndex; mask [B, L_emb]."""
        hs = torch.stack([h.float() for h in hidden_states])  # [N+1, B, L, D]
        n_layers = hs.shape[0]
        if self._adj is None:
            self._adj, self._cos, self._dist = np.zeros(n_layers - 1), np.zeros(n_layers), np.zeros(n_layers)
        for b, ix in enumerate(index):
            h = hs[:, b, : ix.length]  # [N+1, L_b, D]
            self._adj += F.cosine_similarity(h[:-1], h[1:], dim=-1).mean(-1).cpu().numpy()
            self._n_tok_samples += 1
            if not ix.has_image:
                continue
            is_v = torch.zeros(ix.length, dtype=torch.bool)
            is_v[ix.v_start : ix.v_start + ix.n_vision] = True
            v, t = h[:, is_v].mean(1), h[:, ~is_v].mean(1)  # [N+1, D] each
            self._cos += F.cosine_similarity(v, t, dim=-1).cpu().numpy()
            self._dist += (v - t).norm(dim=-1).cpu().numpy()
            self._n_img_samples += 1

    def result(self) -> ProbeResult:
        if self._adj is None or self._n_img_samples == 0:
            raise ValueError("the probe saw no sample with an image: give data with images")
        return ProbeResult(
            adjacent_cos=(self._adj / self._n_tok_samples).tolist(),
            vt_cos=(self._cos / self._n_img_samples).tolist(),
            vt_dist=(self._dist / self._n_img_samples).tolist(),
            n_samples=self._n_img_samples,
        )
