"""How faithfully a cached (top-k) teacher reproduces the dense reverse-KL gradient.

The student learns from ∂L_rkl/∂(student logits); the angle between that gradient computed from
the sparse teacher and from the dense teacher measures what the cache loses (docs/DESIGN.md §4's
table). Used by the tests and by the cache-size benchmark.
"""

from __future__ import annotations

import math

import torch

from pipeline.targets import sparse_topk
from student_train.losses.rkl import reverse_kl_dense, reverse_kl_sparse


def _grad(loss_fn, logits: torch.Tensor) -> torch.Tensor:
    x = logits.detach().float().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(x), x)
    return g.flatten()


def rkl_gradient_angle(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, k: int, tail_model: str = "bucket"
) -> float:
    """Angle in degrees between the sparse and the dense reverse-KL gradients w.r.t. the
    student logits, over all positions together.

    student_logits, teacher_logits: [N, vocab]. The teacher is reduced with
    `pipeline.targets.sparse_topk(teacher_logits, k)`, exactly as the dump does (fp32 here: the
    storage dtype's rounding is not part of this number).
    """
    sd = sparse_topk(teacher_logits, k)
    g_dense = _grad(lambda x: reverse_kl_dense(x, teacher_logits), student_logits)
    g_sparse = _grad(
        lambda x: reverse_kl_sparse(x, sd.ids, sd.logprobs, sd.tail_logmass, tail_model), student_logits
    )
    g_dense, g_sparse = g_dense.double(), g_sparse.double()
    cos = torch.dot(g_dense, g_sparse) / (g_dense.norm() * g_sparse.norm()).clamp_min(1e-300)
    return math.degrees(math.acos(float(cos.clamp(-1.0, 1.0))))


def synthetic_lm_logits(
    n: int, vocab: int, *, zipf: float = 2.25, noise: float = 0.5, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A peaked, LM-like teacher and a student near it: (student, teacher), each [N, vocab] fp32.

    Teacher logits fall off as −zipf·log(rank) over a random ranking of the vocabulary, plus
    N(0, 0.5²) jitter (zipf 2.25 at vocab 2000: entropy ≈ 1.3 nats, top-8 mass ≈ 0.95); the
    student is the teacher plus N(0, noise²) per logit.
    """
    g = torch.Generator().manual_seed(seed)
    ranks = torch.stack([torch.randperm(vocab, generator=g) for _ in range(n)]).float() + 1.0
    teacher = -zipf * torch.log(ranks) + 0.5 * torch.randn(n, vocab, generator=g)
    student = teacher + noise * torch.randn(n, vocab, generator=g)
    return student, teacher
