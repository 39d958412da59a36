"""`alignkd cache size-table`: bytes/sample and fidelity of each storage option, measured by
writing synthetic teacher targets at the real teacher's shapes through the real writer and
reading them back through the real reader.

Synthetic data (stated assumptions, also in the JSON):
* attention: first-layer softmax over all causal keys (a 35-token prompt prefix, |V| = 144 vision
  tokens, then |T| = 200 text tokens), restricted to V: per-head temperature, a BOS sink, a
  recency bias and a smooth per-image saliency map over the 12×12 grid; student = same logits + noise.
* vocabulary: Zipf-shaped logits over a random permutation of 32000 ids plus noise, sharpness
  bisected to a mean entropy of ~1.3 nats; student = teacher logits + N(0, 1).
* vision tokens: N(0, 1) with 8 "massive activation" channels (×30) and 0.1% sparse outliers (×10).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cache_schema.codecs import Encoding
from cache_schema.provenance import Provenance
from cache_schema.reader import CacheReader
from cache_schema.schema import SampleTargets
from cache_schema.writer import CacheStore

SUBSETS = {"short": 3_610_000, "long": 3_670_000}
ATTN_OPTIONS = [  # (value mode, codec)
    ("f32", "zstd:3"), ("f32", "blosc:zstd:3:shuffle"),
    ("f16", "zstd:3"), ("f16", "blosc:zstd:3:shuffle"), ("f16", "blosc:zstd:3:bitshuffle"),
    ("u8", "zstd:3"), ("u8", "blosc:zstd:3:bitshuffle"),
    ("u8sqrt", "zstd:3"), ("u8sqrt", "zstd:9"), ("u8sqrt", "blosc:zstd:3:bitshuffle"),
]
LOGIT_OPTIONS = [("f32", "zstd:3"), ("f32", "blosc:zstd:3:shuffle"), ("f16", "zstd:3"), ("f16", "blosc:zstd:3:shuffle")]
VISION_OPTIONS = [("f32", "zstd:3"), ("f32", "blosc:zstd:3:shuffle"), ("f16", "zstd:3"),
                  ("f16", "blosc:zstd:3:shuffle"), ("bf16", "zstd:3"), ("bf16", "blosc:zstd:3:shuffle")]


@dataclass(frozen=True)
class Shapes:
    heads: int = 32
    n_vision: int = 144
    hidden: int = 4096
    vocab: int = 32000
    n_text: int = 200
    n_resp: int = 60
    prefix: int = 35
    topk: int = 64
    focus_k: int = 16


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def synth_attention(rng: np.random.Generator, sh: Shapes) -> tuple[np.ndarray, np.ndarray]:
    """(teacher, student) first-layer T→V attention, each [H, |T|, |V|] float32."""
    P, V, T, H = sh.prefix, sh.n_vision, sh.n_text, sh.heads
    L = P + V + T
    g = int(round(V ** 0.5))
    sal = rng.normal(size=(g + 4, g + 4))
    sal = sum(np.roll(np.roll(sal, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1))[2:-2, 2:-2] / 3
    q = np.arange(P + V, L)[:, None]  # query positions [T, 1]
    k = np.arange(L)[None, :]  # key positions [1, L]
    causal = k <= q
    teacher, student = np.empty((H, T, V), np.float32), np.empty((H, T, V), np.float32)
    for h in range(H):
        logits = rng.uniform(0.5, 2.5) * rng.normal(size=(T, L))
        logits[:, 0] += rng.uniform(2, 6)  # BOS sink
        logits += rng.uniform(0, 3) * np.exp(-np.maximum(q - k, 0) / rng.uniform(2, 20))  # recency
        logits[:, P:P + V] += rng.uniform(0, 2) * sal.ravel()[None, :]  # image saliency
        for out, lg in ((teacher, logits), (student, logits + rng.normal(0, 0.5, size=logits.shape))):
            out[h] = _softmax(np.where(causal, lg, -np.inf))[:, P:P + V]
    return teacher, student


def synth_vocab(rng: np.random.Generator, sh: Shapes, target_entropy: float = 1.3):
    """(teacher logp [R, vocab] float64, student logp) with mean teacher entropy ≈ target."""
    base = -np.log(np.arange(1, sh.vocab + 1))[None, :] + rng.normal(0, 1.0, size=(sh.n_resp, sh.vocab))
    base = np.take_along_axis(base, rng.permuted(np.tile(np.arange(sh.vocab), (sh.n_resp, 1)), axis=1), 1)
    lo, hi = 0.1, 20.0
    for _ in range(16):  # bisect the sharpness: (20 - 0.1) / 2^16 is plenty
        a = (lo + hi) / 2
        p = _softmax(a * base)
        ent = -(p * np.log(np.maximum(p, 1e-300))).sum(-1).mean()
        lo, hi = (a, hi) if ent > target_entropy else (lo, a)
    t = a * base
    p = _softmax(t)
    ent = -(p * np.log(np.maximum(p, 1e-300))).sum(-1).mean()
    t_lp = t - np.log(np.exp(t - t.max(-1, keepdims=True)).sum(-1, keepdims=True)) - t.max(-1, keepdims=True)
    s = t + rng.normal(0, 1.0, size=t.shape)
    s_lp = s - np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1, keepdims=True)) - s.max(-1, keepdims=True)
    return t_lp, s_lp, float(ent)


def sparse_topk_np(logp: np.ndarray, k: int):
    """numpy twin of pipeline.targets.sparse_topk: ids [R,k], logprobs [R,k], tail [R]."""
    part = np.argpartition(-logp, k - 1, axis=-1)[:, :k]
    order = np.argsort(-np.take_along_axis(logp, part, -1), axis=-1, kind="stable")
    ids = np.take_along_axis(part, order, -1)
    lp = np.take_along_axis(logp, ids, -1)
    rest = logp.copy()
    np.put_along_axis(rest, ids, -np.inf, -1)
    m = rest.max(-1, keepdims=True)
    tail = (m + np.log(np.exp(rest - m).sum(-1, keepdims=True)))[:, 0]
    return ids, lp.astype(np.float32), tail.astype(np.float32)


def synth_vision(rng: np.random.Generator, sh: Shapes) -> np.ndarray:
    x = rng.normal(0, 1.0, size=(sh.n_vision, sh.hidden))
    x[:, rng.choice(sh.hidden, 8, replace=False)] *= 30.0
    mask = rng.random(x.shape) < 1e-3
    x[mask] *= 10.0
    return x.astype(np.float32)


def _bucket_rkl(q_lp_ids: np.ndarray, q_tail: np.ndarray, p_lp: np.ndarray, p_tail: np.ndarray) -> np.ndarray:
    """Reverse KL(q‖p) over {top-k ids, rest} buckets per position [R]."""
    q = np.concatenate([np.exp(q_lp_ids), np.exp(q_tail)[:, None]], -1)
    lq = np.concatenate([q_lp_ids, q_tail[:, None]], -1)
    lp = np.concatenate([p_lp, p_tail[:, None]], -1)
    return (q * (lq - lp)).sum(-1)


def _bucket_kl(p_lp, p_tail, ph_lp, ph_tail) -> np.ndarray:
    p = np.concatenate([p_lp, p_tail[:, None]], -1).astype(np.float64)
    ph = np.concatenate([ph_lp, ph_tail[:, None]], -1).astype(np.float64)
    ph = ph - np.log(np.exp(ph).sum(-1, keepdims=True))  # renormalise the reconstruction
    return (np.exp(p) * (p - ph)).sum(-1)


def _store_bytes(unit_dir: Path, names: list[str]) -> int:
    """Bytes of the chunk/shard files (per-unit zarr.json metadata excluded: amortised over a unit)."""
    return sum(f.stat().st_size for n in names for f in (unit_dir / n / "c").rglob("*") if f.is_file())


def measure(n_samples: int = 4, n_images: int = 2, seed: int = 0, sh: Shapes = Shapes(),
            workdir: str | None = None) -> dict:
    """Write every option through CacheStore/CacheReader; return the JSON-able report."""
    rng = np.random.default_rng(seed)
    samples, truth = [], []
    for i in range(n_samples):
        att, att_s = synth_attention(rng, sh)
        t_lp, s_lp, ent = synth_vocab(rng, sh)
        ids, lp, tail = sparse_topk_np(t_lp, sh.topk)
        focus = np.sort(np.argsort(-att.mean((0, 1)))[: sh.focus_k]).astype(np.int64)
        samples.append(SampleTargets(sample_id=f"synth/{i}", token_hash=f"t{i}", image_hash=f"img{i % n_images}",
                                     n_text=sh.n_text, attn={("first", "tv"): att}, focus=focus,
                                     topk_ids=ids, topk_logprobs=lp, tail_logmass=tail))
        truth.append((att_s, s_lp, ent))
    images = {f"img{j}": synth_vision(rng, sh) for j in range(n_images)}
    n_opt = max(len(ATTN_OPTIONS), len(LOGIT_OPTIONS), len(VISION_OPTIONS))
    res: dict[str, dict] = {"attention": {}, "logits": {}, "vision": {}}
    if workdir is None and Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK):
        workdir = "/dev/shm"  # the stores are scratch: skip the disk's fsync cost
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for o in range(n_opt):
            (am, ac), (lm, lc), (vm, vc) = (ATTN_OPTIONS[o % len(ATTN_OPTIONS)], LOGIT_OPTIONS[o % len(LOGIT_OPTIONS)],
                                            VISION_OPTIONS[o % len(VISION_OPTIONS)])
            enc = Encoding(attn=am, attn_codec=ac, logprobs=lm, logits_codec=lc, vision=vm, vision_codec=vc)
            prov = Provenance(teacher_fingerprint="synthetic", teacher_config_fingerprint="synthetic",
                              tokenizer_fingerprint="synthetic", manifest_fingerprint="synthetic",
                              templates=("v1",), subset="synthetic", max_length=2048,
                              num_vision_tokens=sh.n_vision, teacher_heads=sh.heads, teacher_hidden_size=sh.hidden,
                              vocab_size=sh.vocab, logits_topk=sh.topk, focus_k=sh.focus_k, encoding=enc)
            path = Path(tmp) / f"opt{o}"
            store = CacheStore.create_or_open(path, prov)
            with store.unit_writer("u0") as w:
                for h, tok in images.items():
                    w.add_image(h, tok)
                for s in samples:
                    w.add_sample(s)
            store.finalize([s.sample_id for s in samples])
            reader = CacheReader(path)
            back = [reader.get(s.sample_id) for s in samples]
            udir = path / "units" / "u0"
            if o < len(ATTN_OPTIONS):
                res["attention"][f"{am} + {ac}"] = _attn_row(am, ac, udir, samples, back, truth, sh)
            if o < len(LOGIT_OPTIONS):
                res["logits"][f"logprobs {lm} + {lc}"] = _logit_row(lm, lc, udir, samples, back, truth, sh)
            if o < len(VISION_OPTIONS):
                res["vision"][f"{vm} + {vc}"] = _vision_row(vm, vc, udir, images, reader, sh)
    return _report(res, sh, n_samples, n_images, np.mean([t[2] for t in truth]))


def _attn_row(mode, codec, udir, samples, back, truth, sh) -> dict:
    names = ["attn_first_tv"] + (["attn_first_tv_scale"] if mode.startswith("u8") else [])
    disk = _store_bytes(udir, names) / len(samples)
    itemsize = {"f32": 4, "f16": 2}.get(mode, 1)
    decoded = sh.heads * sh.n_text * sh.n_vision * itemsize + (sh.heads * sh.n_text * 4 if mode.startswith("u8") else 0)
    maxabs, rel_loss, rel_row, zeroed, nonzero = 0.0, [], 0.0, 0, 0
    for s, b, (att_s, _, _) in zip(samples, back, truth):
        t, th = s.attn[("first", "tv")], b.attn[("first", "tv")]
        maxabs = max(maxabs, float(np.abs(th - t).max()))
        zeroed += int(((th == 0) & (t > 0)).sum())
        nonzero += int((t > 0).sum())
        rel_row = max(rel_row, float((np.abs(th - t).max(-1) / np.maximum(t.max(-1), 1e-30)).max()))
        l0 = float(((att_s.astype(np.float64) - t) ** 2).mean())
        l1 = float(((att_s.astype(np.float64) - th) ** 2).mean())
        rel_loss.append(abs(l1 - l0) / l0)
    return {"lossless": mode == "f32", "bytes_per_sample": disk, "compression_ratio": decoded / disk,
            "errors": {"max_abs": maxabs, "max_abs_over_row_max": rel_row, "mse_loss_rel_err": max(rel_loss),
                       "zeroed_frac": zeroed / max(nonzero, 1)}}


def _logit_row(mode, codec, udir, samples, back, truth, sh) -> dict:
    disk = _store_bytes(udir, ["topk_ids", "topk_logprobs", "tail_logmass"]) / len(samples)
    decoded = sh.n_resp * sh.topk * (2 + (4 if mode == "f32" else 2)) + sh.n_resp * 4
    kl, rkl_rel = [], []
    for s, b, (_, s_lp, _) in zip(samples, back, truth):
        kl.append(_bucket_kl(s.topk_logprobs, s.tail_logmass, b.topk_logprobs, b.tail_logmass))
        q_ids = np.take_along_axis(s_lp, s.topk_ids, -1)
        q_tail = np.log1p(-np.minimum(np.exp(q_ids).sum(-1), 1 - 1e-12))
        r0 = _bucket_rkl(q_ids, q_tail, s.topk_logprobs.astype(np.float64), s.tail_logmass.astype(np.float64))
        r1 = _bucket_rkl(q_ids, q_tail, b.topk_logprobs.astype(np.float64), b.tail_logmass.astype(np.float64))
        rkl_rel.append(abs(r1.mean() - r0.mean()) / r0.mean())
    kl = np.concatenate(kl)
    return {"lossless": mode == "f32", "bytes_per_sample": disk, "compression_ratio": decoded / disk,
            "errors": {"kl_mean": float(kl.mean()), "kl_max": float(kl.max()), "rkl_loss_rel_err": float(max(rkl_rel))}}


def _vision_row(mode, codec, udir, images, reader, sh) -> dict:
    disk = _store_bytes(udir, ["image_tokens"]) / len(images)
    decoded = sh.n_vision * sh.hidden * (4 if mode == "f32" else 2)
    rel, rms = 0.0, 0.0
    for h, x in images.items():
        xh = reader.image_tokens(h)
        big = np.abs(x) >= 1e-2 * np.sqrt((x.astype(np.float64) ** 2).mean())
        rel = max(rel, float((np.abs(xh - x)[big] / np.abs(x)[big]).max()))
        rms = max(rms, float(np.linalg.norm(xh - x) / np.linalg.norm(x)))
    return {"lossless": mode == "f32", "bytes_per_image": disk, "compression_ratio": decoded / disk,
            "errors": {"max_rel_err": rel, "rel_rms_err": rms}}


def _keys(e: Encoding) -> dict[str, str]:
    return {"attention": f"{e.attn} + {e.attn_codec}", "logits": f"logprobs {e.logprobs} + {e.logits_codec}",
            "vision": f"{e.vision} + {e.vision_codec}"}


DEFAULT_KEYS = _keys(Encoding())  # the table marks the library's actual defaults
LOSSLESS_KEYS = _keys(Encoding.lossless())


def _report(res: dict, sh: Shapes, n_samples: int, n_images: int, entropy: float) -> dict:
    naive = {"attention": sh.heads * sh.n_text * sh.n_vision * 4, "logits": sh.n_resp * sh.vocab * 2,
             "vision": sh.n_vision * sh.hidden * 4}
    naive["total"] = sum(naive.values())
    for tgt, rows in res.items():
        for row in rows.values():
            row["ratio_vs_naive"] = naive[tgt] / row.get("bytes_per_sample", row.get("bytes_per_image"))

    def total(keys: dict) -> float:
        return (res["attention"][keys["attention"]]["bytes_per_sample"] + res["logits"][keys["logits"]]["bytes_per_sample"]
                + res["vision"][keys["vision"]]["bytes_per_image"] + sh.focus_k * 2)

    per = {"naive": naive["total"], "default": total(DEFAULT_KEYS), "lossless": total(LOSSLESS_KEYS)}
    proj = {name: {"samples": n, **{f"{k}_TB": v * n / 1e12 for k, v in per.items()}} for name, n in SUBSETS.items()}
    return {
        "shapes": sh.__dict__, "n_samples_measured": n_samples, "n_images_measured": n_images,
        "assumptions": {"unique_images_per_sample": 1.0, "teacher_entropy_nats": round(float(entropy), 3),
                        "sizes_exclude": "index (~100 B/sample) and per-unit metadata",
                        "data": "synthetic; see cache_schema/sizes.py docstring"},
        "naive_bytes_per_sample": naive, "targets": res,
        "defaults": DEFAULT_KEYS, "lossless": LOSSLESS_KEYS,
        "bytes_per_sample": per, "projection": proj,
    }


def to_markdown(rep: dict) -> str:
    sh, naive = rep["shapes"], rep["naive_bytes_per_sample"]
    out = [f"Shapes: H={sh['heads']}, |V|={sh['n_vision']}, D={sh['hidden']}, vocab={sh['vocab']}, "
           f"|T|={sh['n_text']}, |R|={sh['n_resp']}, top-k={sh['topk']}; {rep['n_samples_measured']} samples, "
           f"teacher entropy {rep['assumptions']['teacher_entropy_nats']} nats.", ""]
    naive_name = {"attention": "fp32 dense [H,|T|,|V|]", "logits": "fp16 full logits [|R|, vocab]",
                  "vision": "fp32 [|V|, D] per sample"}
    for tgt, rows in rep["targets"].items():
        out += [f"### {tgt} (naive: {naive_name[tgt]} = {naive[tgt] / 1e6:.3f} MB)", "",
                "| option | lossless | MB/sample | compression | vs naive | errors |", "|---|---|---|---|---|---|"]
        for name, r in rows.items():
            b = r.get("bytes_per_sample", r.get("bytes_per_image"))
            err = ", ".join(f"{k} {v:.3g}" for k, v in r["errors"].items())
            mark = " **(default)**" if rep["defaults"][tgt] == name else ""
            out.append(f"| {name}{mark} | {'yes' if r['lossless'] else 'no'} | {b / 1e6:.4f} | "
                       f"{r['compression_ratio']:.2f}× | {r['ratio_vs_naive']:.1f}× | {err} |")
        out.append("")
    per = rep["bytes_per_sample"]
    out += ["### Projected totals (1 unique image per sample assumed)", "",
            "| subset | samples | naive TB | lossless TB | default TB |", "|---|---|---|---|---|"]
    for name, p in rep["projection"].items():
        out.append(f"| {name} | {p['samples']:,} | {p['naive_TB']:.2f} | {p['lossless_TB']:.2f} | {p['default_TB']:.2f} |")
    out.append(f"\nPer sample: naive {per['naive'] / 1e6:.2f} MB, lossless {per['lossless'] / 1e6:.2f} MB, "
               f"default {per['default'] / 1e6:.3f} MB.")
    return "\n".join(out) + "\n"


def size_table(out_dir: str | Path | None = None, quick: bool = False, seed: int = 0) -> tuple[dict, str]:
    """Run the measurement (quick: 1 sample, 1 image); write size_table.{json,md} to out_dir."""
    rep = measure(n_samples=1 if quick else 6, n_images=1 if quick else 3, seed=seed)
    md = to_markdown(rep)
    if out_dir is not None:
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / "size_table.json").write_text(json.dumps(rep, indent=2))
        (d / "size_table.md").write_text(md)
    return rep, md


__all__ = ["size_table", "measure", "to_markdown", "Shapes"]
