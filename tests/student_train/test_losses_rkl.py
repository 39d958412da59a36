"""Reverse KL: dense and sparse (bucket / uniform / none) against slow float64 references, the
k = vocab identity, numerics at the edges, and the sparse-vs-dense gradient fidelity."""

import math

import pytest
import torch

from pipeline.targets import sparse_topk
from student_train.losses import reverse_kl_dense, reverse_kl_sparse
from student_train.losses.fidelity import rkl_gradient_angle, synthetic_lm_logits

N, VOCAB = 5, 50


def _logits(seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(N, VOCAB, generator=g), scale * torch.randn(N, VOCAB, generator=g)


def _rel(a, b):
    return 0.0 if a == b else abs(a - b) / abs(b)  # k = 1 with "none" is exactly 0


def _slow_rkl(s, t, ids=None, tail_model="dense"):
    """Row by row in float64 from the definitions (probabilities, not log space)."""
    total = 0.0
    for n in range(s.shape[0]):
        q = torch.softmax(s[n].double(), -1)
        p = torch.softmax(t[n].double(), -1)
        if tail_model == "dense":
            total += float((q * (q.log() - p.log())).sum())
            continue
        top = ids[n].tolist()
        rest = [x for x in range(s.shape[1]) if x not in top]
        if tail_model == "bucket":  # KL of the coarse-grained {top-k ids, rest} distributions
            qc = torch.cat([q[top], q[rest].sum().reshape(1)])
            pc = torch.cat([p[top], p[rest].sum().reshape(1)])
        elif tail_model == "uniform":
            qc, pc = q, p.clone()
            pc[rest] = p[rest].sum() / len(rest)
        else:  # none: both renormalised over the top-k
            qc, pc = q[top] / q[top].sum(), p[top] / p[top].sum()
        total += float((qc * (qc.log() - pc.log())).sum())
    return total / s.shape[0]


def test_dense_matches_slow_reference():
    s, t = _logits(0)
    assert _rel(reverse_kl_dense(s, t).item(), _slow_rkl(s, t)) <= 1e-6


@pytest.mark.parametrize("tail_model", ["bucket", "uniform", "none"])
@pytest.mark.parametrize("k", [1, 7, VOCAB])
def test_sparse_matches_slow_reference(tail_model, k):
    s, t = _logits(1)
    sd = sparse_topk(t, k)
    got = reverse_kl_sparse(s, sd.ids, sd.logprobs, sd.tail_logmass, tail_model).item()
    ref = _slow_rkl(s, t, sd.ids, tail_model if k < VOCAB else "dense")
    assert _rel(got, ref) <= 1e-6, (got, ref)


@pytest.mark.parametrize("tail_model", ["bucket", "uniform", "none"])
def test_sparse_with_full_vocab_equals_dense(tail_model):
    s, t = _logits(2)
    sd = sparse_topk(t, VOCAB)
    assert torch.isinf(sd.tail_logmass).all()
    s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
    dense = reverse_kl_dense(s1, t)
    sparse = reverse_kl_sparse(s2, sd.ids, sd.logprobs, sd.tail_logmass, tail_model)
    assert _rel(sparse.item(), dense.item()) <= 1e-6
    dense.backward(), sparse.backward()
    torch.testing.assert_close(s2.grad, s1.grad, rtol=1e-5, atol=1e-7)


def test_bucket_is_a_lower_bound_of_dense():  # data processing inequality
    s, t = _logits(3)
    sd = sparse_topk(t, 4)
    assert reverse_kl_sparse(s, sd.ids, sd.logprobs, sd.tail_logmass).item() <= reverse_kl_dense(s, t).item()


def test_no_nan_when_p_rest_is_zero_or_q_rest_underflows():
    s, t = _logits(4)
    sd = sparse_topk(t, 5)
    # the teacher claims the top-5 hold everything while the student spreads mass: finite, large
    s1 = s.clone().requires_grad_()
    loss = reverse_kl_sparse(s1, sd.ids, sd.logprobs, torch.full((N,), -math.inf), "bucket")
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() > 1.0 and torch.isfinite(s1.grad).all()
    # the student puts everything on the top-5 (q_rest = exp(-1e4) underflows to 0)
    s2 = torch.full((N, VOCAB), -1e4).scatter(-1, sd.ids, 0.0).requires_grad_()
    for tm in ("bucket", "uniform", "none"):
        s2.grad = None
        loss = reverse_kl_sparse(s2, sd.ids, sd.logprobs, sd.tail_logmass, tm)
        loss.backward()
        assert math.isfinite(loss.item()) and torch.isfinite(s2.grad).all(), tm
    # no response position: 0, still differentiable
    empty = torch.zeros(0, VOCAB, requires_grad=True)
    z = reverse_kl_sparse(empty, torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3), torch.zeros(0))
    assert z.item() == 0.0 and reverse_kl_dense(empty, torch.zeros(0, VOCAB)).item() == 0.0


def test_half_precision_logits_are_upcast():
    s, t = _logits(5)
    got = reverse_kl_dense(s.bfloat16(), t.bfloat16())
    assert got.dtype == torch.float32
    assert _rel(got.item(), _slow_rkl(s.bfloat16().float(), t.bfloat16().float())) <= 1e-6


def test_rejects_bad_inputs():
    s, t = _logits(6)
    sd = sparse_topk(t, 3)
    with pytest.raises(ValueError, match="tail_model"):
        reverse_kl_sparse(s, sd.ids, sd.logprobs, sd.tail_logmass, "gaussian")
    with pytest.raises(ValueError, match="shapes disagree"):
        reverse_kl_sparse(s, sd.ids[:, :2], sd.logprobs, sd.tail_logmass)


def test_gradient_angle_bucket_beats_uniform_and_none():
    """Peaked LM-like teacher (vocab 2000, entropy ≈ 1.3 nats), student = teacher + noise:
    the bucket's gradient must point closer to the dense one than the other tail models'."""
    s, t = synthetic_lm_logits(16, 2000, seed=0)
    for k in (8, 64):
        ang = {tm: rkl_gradient_angle(s, t, k, tm) for tm in ("bucket", "uniform", "none")}
        mass = torch.softmax(t, -1).topk(k, -1).values.sum(-1).mean().item()
        print(f"k={k} top-k mass {mass:.3f}: " + ", ".join(f"{tm} {a:.2f}°" for tm, a in ang.items()))
        assert ang["bucket"] < ang["none"] < ang["uniform"], ang
        assert rkl_gradient_angle(s, t, 2000, "bucket") < 0.01  # k = vocab: the same gradient
