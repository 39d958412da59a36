"""Fidelity of the cache's lossy choices, measured on what the student learns from: gradients.

Sparse output distribution: angle between ∂L_rkl/∂(student logits) from the cached top-k (+ tail
model) and from the dense teacher (`student_train.losses.fidelity.rkl_gradient_angle`), for
k ∈ {8, 16, 32, 64, 128} and the tail models bucket / uniform / none, on a peaked LM-like teacher
(vocab 32000, Zipf logits whose exponent is bisected to a mean entropy ≈ 1.3 nats; student =
teacher + N(0, noise²)), next to docs/DESIGN.md §4's table. "bucket, f16" also rounds the stored
log-probs to float16 as the default encoding does.

Stored attention: for each encoding of cache_schema (f32, f16, u8, u8sqrt; the store's own
encode/decode functions) the relative error of L_attn (the real `attention_distill_loss`, 16
student heads → 32 teacher heads through the 1×1 HeadAdapter) and of its gradient w.r.t. the
student attention, at the real shapes (32 × 200 × 144, the size table's synthetic first-layer
attention), with a random adapter (start of training) and a least-squares-fitted one (a trained
adapter: the residual is small, so storage error weighs more).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from benchmarks.common import Flags
from cache_schema.codecs import ATTN_MODES, decode_attn, encode_attn
from cache_schema.sizes import Shapes, synth_attention
from pipeline.targets import sparse_topk
from student_train.adapters import HeadAdapter
from student_train.losses import attention_distill_loss, reverse_kl_dense, reverse_kl_sparse
from student_train.losses.fidelity import rkl_gradient_angle, synthetic_lm_logits

KS = (8, 16, 32, 64, 128)
TAILS = ("bucket", "uniform", "none")
# docs/DESIGN.md §4: k → (teacher mass in top-k, uniform tail angle °, bucket angle °)
DESIGN = {8: (0.957, 42.0, 6.9), 16: (0.981, 23.0, 3.1), 32: (0.991, 9.8, 1.2), 64: (0.996, 3.7, 0.5)}


def _entropy(logits: torch.Tensor) -> float:
    lp = torch.log_softmax(logits.double(), -1)
    return float(-(lp.exp() * lp).sum(-1).mean())


def calibrate_zipf(vocab: int, n: int, target: float = 1.3, seed: int = 0) -> float:
    """Zipf exponent giving `synthetic_lm_logits(n, vocab, seed=seed)` a mean teacher entropy ≈
    target (bisection; the same n and seed draw the same ranks and jitter, so it is exact)."""
    lo, hi = 0.5, 8.0
    for _ in range(12):
        z = (lo + hi) / 2
        ent = _entropy(synthetic_lm_logits(n, vocab, zipf=z, seed=seed)[1])
        lo, hi = (z, hi) if ent > target else (lo, z)
    return (lo + hi) / 2


def _angle_f16(student: torch.Tensor, teacher: torch.Tensor, k: int) -> float:
    """Bucket angle with the top-k log-probs rounded through float16 (the default storage)."""
    sd = sparse_topk(teacher, k)
    lp16 = sd.logprobs.half().float()

    def grad(fn) -> torch.Tensor:
        x = student.detach().float().requires_grad_(True)
        return torch.autograd.grad(fn(x), x)[0].flatten().double()

    gd = grad(lambda x: reverse_kl_dense(x, teacher))
    gs = grad(lambda x: reverse_kl_sparse(x, sd.ids, lp16, sd.tail_logmass, "bucket"))
    cos = float(torch.dot(gd, gs) / (gd.norm() * gs.norm()))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def rkl_table(n: int, vocab: int = 32000, noise: float = 0.5, seed: int = 0,
              other_noise: tuple[float, ...] = (0.25, 1.0, 2.0)) -> dict:
    zipf = calibrate_zipf(vocab, n, seed=seed)
    student, teacher = synthetic_lm_logits(n, vocab, zipf=zipf, noise=noise, seed=seed)
    p = torch.softmax(teacher.double(), -1)
    rows = []
    for k in KS:
        mass = float(p.topk(k, -1).values.sum(-1).mean())
        row = {"k": k, "teacher_mass_topk": mass, **{f"angle_{t}_deg": rkl_gradient_angle(student, teacher, k, t) for t in TAILS}}
        row["angle_bucket_f16_deg"] = _angle_f16(student, teacher, k)
        if k in DESIGN:
            row["design"] = dict(zip(("teacher_mass_topk", "angle_uniform_deg", "angle_bucket_deg"), DESIGN[k]))
        rows.append(row)
    # the angle depends on how far the student is from the teacher: the bucket column again, other noise levels
    sens = {}
    for nz in other_noise:
        st, te = synthetic_lm_logits(n, vocab, zipf=zipf, noise=nz, seed=seed)
        sens[str(nz)] = {str(k): rkl_gradient_angle(st, te, k, "bucket") for k in KS}
    return {"vocab": vocab, "positions": n, "zipf": zipf, "noise": noise, "teacher_entropy_nats": _entropy(teacher),
            "rows": rows, "bucket_angle_by_noise": sens}


def _fit_adapter(student: torch.Tensor, teacher: torch.Tensor, ad: HeadAdapter) -> None:
    """Least-squares 1×1 conv: teacher[o] ≈ Σ_h W[o, h]·student[h] + b[o] over every entry."""
    x = torch.cat([student.flatten(1), torch.ones(1, student[0].numel())]).double()  # [H_s + 1, N]
    sol = torch.linalg.lstsq(x.T, teacher.flatten(1).double().T).solution  # [H_s + 1, H_t]
    with torch.no_grad():
        ad.conv.weight.copy_(sol[:-1].T[:, :, None, None].float())
        ad.conv.bias.copy_(sol[-1].float())


def _loss_grad(a_s: torch.Tensor, a_t: torch.Tensor, ad: HeadAdapter) -> tuple[float, torch.Tensor]:
    x = a_s.clone().requires_grad_(True)
    loss = attention_distill_loss([x], [a_t], ad)
    (g,) = torch.autograd.grad(loss, x)
    return loss.item(), g.double().flatten()


def attention_table(seed: int = 0) -> dict:
    sh = Shapes()
    rng = np.random.default_rng(seed)
    t_np, s_np = synth_attention(rng, sh)  # [32, |T|, |V|] each
    teacher = torch.from_numpy(t_np)
    student = torch.from_numpy(np.ascontiguousarray(s_np[::2]))  # 16 heads, as the real student has
    torch.manual_seed(seed)
    adapters = {"random": HeadAdapter(16, sh.heads), "fitted": HeadAdapter(16, sh.heads)}
    _fit_adapter(student, teacher, adapters["fitted"])
    ref = {name: _loss_grad(student, teacher, ad) for name, ad in adapters.items()}
    rows = {}
    for mode in ATTN_MODES:
        q, scale = encode_attn(t_np, mode)
        dec = torch.from_numpy(decode_attn(q, scale, mode))
        row = {"max_abs_err": float((dec - teacher).abs().max()),
               "zeroed_frac": float(((dec == 0) & (teacher > 0)).sum() / (teacher > 0).sum())}
        for name, ad in adapters.items():
            l0, g0 = ref[name]
            l1, g1 = _loss_grad(student, dec, ad)
            cos = float(torch.dot(g0, g1) / (g0.norm() * g1.norm()))
            row[name] = {"loss": l0, "loss_rel_err": abs(l1 - l0) / l0, "grad_rel_err": float((g1 - g0).norm() / g0.norm()),
                         "grad_angle_deg": math.degrees(math.acos(max(-1.0, min(1.0, cos))))}
        rows[mode] = row
    return {"shapes": {"teacher_heads": sh.heads, "student_heads": 16, "n_text": sh.n_text, "n_vision": sh.n_vision},
            "encodings": rows}


def _vs_design(rk: dict) -> str:
    """One sentence comparing the measured table with docs/DESIGN.md §4's."""
    rows = [r for r in rk["rows"] if "design" in r]
    dm = max(abs(r["teacher_mass_topk"] - r["design"]["teacher_mass_topk"]) for r in rows)
    q = {t: [r[f"angle_{t}_deg"] / r["design"][f"angle_{t}_deg"] for r in rows] for t in ("uniform", "bucket")}
    k64 = next(r for r in rk["rows"] if r["k"] == 64)
    ub = [r["angle_uniform_deg"] / max(r["angle_bucket_deg"], 1e-9) for r in rk["rows"]]
    return (f"Against docs/DESIGN.md §4: the top-k masses agree within {dm:.3f} (same teacher family at "
            f"{rk['teacher_entropy_nats']:.2f} nats); uniform-tail angles are {min(q['uniform']):.2f}–{max(q['uniform']):.2f}× "
            f"DESIGN's, bucket angles {min(q['bucket']):.2f}–{max(q['bucket']):.2f}× at σ = {rk['noise']} (DESIGN does not "
            "give its student noise; the σ table shows the bucket angle scales with it). The conclusions hold: the "
            f"bucket tail's angle is {min(ub):.0f}–{max(ub):.0f}× smaller than a uniform tail's, and at the default k = 64 it is "
            f"{k64['angle_bucket_deg']:.2f}° (σ = {rk['noise']}); rounding the stored log-probs to f16 changes it by "
            f"{abs(k64['angle_bucket_f16_deg'] - k64['angle_bucket_deg']):.3f}°")


def run(quick: bool, flags: Flags, log=print) -> dict:
    log("[fidelity] sparse-logit gradient angles (vocab 32000) and stored-attention errors")
    res = {"rkl": rkl_table(n=8 if quick else 64), "attention": attention_table(), "notes": []}
    for row in res["rkl"]["rows"]:
        d = row.get("design")
        if d and row["angle_bucket_deg"] > max(2 * d["angle_bucket_deg"], d["angle_bucket_deg"] + 1.0):
            why = (f"bucket angle {row['angle_bucket_deg']:.2f}° vs DESIGN.md's {d['angle_bucket_deg']}°: this teacher "
                   f"keeps {row['teacher_mass_topk']:.3f} of its mass in the top-{row['k']} (DESIGN: "
                   f"{d['teacher_mass_topk']}); the angle grows with the tail mass the cache coarse-grains")
            flags.add("fidelity", f"RKL gradient angle, bucket, k={row['k']}", row["angle_bucket_deg"], "≈ docs/DESIGN.md §4", why)
            res["notes"].append(f"**k={row['k']}: {why}.**")
    res["notes"].append(_vs_design(res["rkl"]))
    for mode, row in res["attention"]["encodings"].items():
        e = row["fitted"]["grad_rel_err"]
        if e > 0.05:
            why = (f"{mode} moves the fitted-adapter gradient by {100 * e:.0f}%: once the adapter has converged the "
                   "residual is comparable to the storage error" + (f" ({100 * row['zeroed_frac']:.0f}% of the non-zero "
                   "weights decode to 0)" if row["zeroed_frac"] > 0.01 else ""))
            flags.add("fidelity", f"attention {mode}: gradient rel. error (fitted adapter)", e, "≤ 0.05", why)
            res["notes"].append(f"**{why}.**")
    return res
