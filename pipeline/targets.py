"""Reductions of the teacher's outputs into what the student learns from (docs/DESIGN.md §3–4).

Shared by the teacher dump (which caches them) and the student's `online` mode (which computes
them live), so both produce the same targets from the same teacher forward. Everything here runs
on the teacher's device, before anything is copied to the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def focus_scores(attn_tv: torch.Tensor) -> torch.Tensor:
    """Focus score of each vision token: s_j = mean_i∈T mean_h A_tv[h, i, j].

    attn_tv: [H, |T|, |V|] first-layer text-query-vision attention probabilities.
    returns: [|V|] float32.
    """
    return attn_tv.float().mean(dim=(0, 1))


def focus_indices(attn_tv: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k vision tokens by focus score, ascending by index: [min(k, |V|)] int64."""
    s = focus_scores(attn_tv)
    idx = torch.topk(s, min(k, s.numel()), sorted=True).indices
    return torch.sort(idx).values


@dataclass
class SparseDistribution:
    """Top-k of a distribution per position plus the mass of everything else.

    ids:      [N, k] int64 token ids, by decreasing probability
    logprobs: [N, k] float32 log p(id)
    tail_logmass: [N] float32 log(1 - Σ_k p), -inf when the top-k hold all the mass
    """

    ids: torch.Tensor
    logprobs: torch.Tensor
    tail_logmass: torch.Tensor


def sparse_topk(logits: torch.Tensor, k: int) -> SparseDistribution:
    """logits: [N, vocab] (any float dtype) → the top-k log-probabilities and the tail mass.

    Computed in fp32 from the full log-softmax so the stored values are exact log p, not
    renormalised over the top-k.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)  # [N, vocab]
    k = min(k, logp.shape[-1])
    top = torch.topk(logp, k, dim=-1, sorted=True)
    # log(1 - Σ p_topk) computed stably as log Σ_{rest} p via logsumexp over the complement
    if k == logp.shape[-1]:
        tail = torch.full(logp.shape[:-1], float("-inf"), device=logp.device)
    else:
        rest = logp.scatter(-1, top.indices, float("-inf"))
        tail = torch.logsumexp(rest, dim=-1)
    return SparseDistribution(ids=top.indices, logprobs=top.values, tail_logmass=tail)
