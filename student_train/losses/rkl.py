"""Reverse KL between the student's and the teacher's next-token distributions (docs/DESIGN.md §3.6).

    L_rkl = mean_t Σ_x q(x) (log q(x) − log p(x)),   q = softmax(student), p = teacher

`mean_t` is over every response logit position of the batch together (token-level mean, like
the supervised CE), not a mean of per-sample means.

Two teacher forms:
* dense logits [N, vocab]: the exact loss (online mode; the reference the sparse form is tested
  against);
* a `pipeline.targets.SparseDistribution` (top-k ids, log-probs, tail log-mass) from the cache,
  with the tail modelled as chosen by `tail_model` (see `reverse_kl_sparse`).

Everything is computed in fp32 log space. Teacher log-probabilities are floored at
log(fp32 tiny) ≈ −87.3 so a zero-probability teacher entry gives a large finite penalty instead
of inf/NaN; student log-probabilities come from log_softmax and are always finite.
"""

from __future__ import annotations

import math

import torch

TAIL_MODELS = ("bucket", "uniform", "none")
# log of the smallest normal fp32: teacher log p below it (including -inf) counts as it
LOG_FLOOR = math.log(torch.finfo(torch.float32).tiny)


def _kl_terms(lq: torch.Tensor, lp: torch.Tensor) -> torch.Tensor:
    """Σ_x q (log q − log p) over the last axis; lq finite or -inf (q = 0 contributes 0)."""
    lp = lp.clamp_min(LOG_FLOOR)
    live = torch.isfinite(lq)
    # where(-inf → 0) before exp/mul, so neither the value nor the gradient sees 0·inf
    lq_safe = torch.where(live, lq, torch.zeros_like(lq))
    t = lq_safe.exp() * (lq_safe - lp)
    return torch.where(live, t, torch.zeros_like(t)).sum(-1)


def _mean_rows(per_row: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if per_row.numel() == 0:  # no response position in the batch: a 0 still tied to the graph
        return like.sum() * 0.0
    return per_row.mean()


def reverse_kl_dense(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Exact reverse KL.

    student_logits: [N, vocab] (any float dtype; upcast to fp32)
    teacher_logits: [N, vocab] dense teacher logits at the same positions (no gradient needed)
    returns: scalar fp32, mean over the N positions (0 when N == 0).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"reverse_kl_dense: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must both be [N, vocab] at the same positions"
        )
    lq = torch.log_softmax(student_logits.float(), dim=-1)
    lp = torch.log_softmax(teacher_logits.float(), dim=-1)
    return _mean_rows(_kl_terms(lq, lp), student_logits)


def reverse_kl_sparse(
    student_logits: torch.Tensor,
    ids: torch.Tensor,
    logprobs: torch.Tensor,
    tail_logmass: torch.Tensor,
    tail_model: str = "bucket",
) -> torch.Tensor:
    """Reverse KL against a cached top-k teacher.

    student_logits: [N, vocab]; ids: [N, k] int64 distinct token ids; logprobs: [N, k] exact
    teacher log p(id) (not renormalised); tail_logmass: [N] log(1 − Σ_k p), -inf when the top-k
    hold all the mass. Returns a scalar fp32, mean over the N positions.

    tail_model:
    * "bucket" (default): both distributions coarse-grained to {the k ids, rest}, then their KL:
      Σ_{i∈topk} q_i (log q_i − log p_i) + q_rest (log q_rest − log p_rest), with
      log q_rest = logsumexp of the student's log q over the complement (no 1 − Σ cancellation).
      Exact when k = vocab; a lower bound of the dense KL otherwise (data processing inequality).
    * "uniform": the tail mass spread evenly over the other vocab − k tokens, then the full KL.
    * "none": top-k only, both q and p renormalised over the k ids (the KL of the two
      distributions conditioned on the top-k; ≥ 0, but no gradient on the tail logits).
    With k = vocab all three equal `reverse_kl_dense`.
    """
    if tail_model not in TAIL_MODELS:
        raise ValueError(f"unknown tail_model {tail_model!r}; use one of {TAIL_MODELS}")
    n, vocab = student_logits.shape
    if ids.shape != logprobs.shape or ids.shape[0] != n or tail_logmass.shape != (n,):
        raise ValueError(
            f"reverse_kl_sparse: shapes disagree: student logits {tuple(student_logits.shape)}, "
            f"ids {tuple(ids.shape)}, logprobs {tuple(logprobs.shape)}, tail {tuple(tail_logmass.shape)}"
            " (want [N, vocab], [N, k], [N, k], [N])"
        )
    k = ids.shape[1]
    lq = torch.log_softmax(student_logits.float(), dim=-1)  # [N, vocab]
    lp_k = logprobs.float()
    lq_k = lq.gather(-1, ids)  # [N, k]
    if tail_model == "none":
        lq_k = lq_k - torch.logsumexp(lq_k, dim=-1, keepdim=True)
        lp_k = lp_k - torch.logsumexp(lp_k, dim=-1, keepdim=True)
        return _mean_rows(_kl_terms(lq_k, lp_k), student_logits)
    if k == vocab:  # no complement: nothing to model (and no all -inf logsumexp to differentiate)
        return _mean_rows(_kl_terms(lq_k, lp_k), student_logits)
    lp_tail = tail_logmass.float()
    if tail_model == "uniform":
        lp = (lp_tail - math.log(vocab - k)).unsqueeze(-1).expand(n, vocab).scatter(-1, ids, lp_k)
        return _mean_rows(_kl_terms(lq, lp), student_logits)
    lq_rest = torch.logsumexp(lq.scatter(-1, ids, float("-inf")), dim=-1)  # [N]
    per_row = _kl_terms(lq_k, lp_k) + _kl_terms(lq_rest.unsqueeze(-1), lp_tail.unsqueeze(-1))
    return _mean_rows(per_row, student_logits)
