"""Which attention encoding for the cache: bytes against the error in L_attn and its gradient,
measured on a *trained* teacher's first-layer text→vision attention.

    PYTHONPATH=. .venv/bin/python -m benchmarks.attn_codec --teacher <trained toy teacher> \
        --student <world>/student_init --world <world> --records 64 --out results/attn_codec

Runs the teacher and the student over held-out records of a toy world (its eval questions with
their answers, template v1) with `forward_align`, capturing the first layer's [H, |T|, |V|]
blocks exactly as the dump does. For each encoding (cache_schema.codecs: f32, f16, u8, u8sqrt —
the default — and the opt-in u6, u6sqrt, u4, u4sqrt; with the zstd or bit-shuffled zstd codec):

* bytes: the blocks encoded by the store's own `encode_attn`, concatenated as a unit stores them
  (1-D, the Encoding's 1 MiB chunks, the codec chain `codec_chain` builds, per-row scales with
  the logits codec) into a zarr array on disk; reported as bits per attention entry (scales
  included), which carries over to the real shapes (32 heads × |T| × 144; the scales' bits per
  row, not per entry, so a toy |V| of 16 is rescaled to 144 entries a row);
* error: the real `attention_distill_loss` (HeadAdapter H_s → H_t) with the decoded blocks
  against the f32 ones: relative error of the loss, and the angle between the two gradients with
  respect to the student's attention and the adapter's weights together. Three students:
  `init` (the student's own attention, the adapter as it starts: head averaging),
  `fitted` (its attention, adapter fitted by least squares to the teacher: a converged adapter),
  `near` (a student that already matches the teacher up to 10% multiplicative noise on its
  head-pair averages, adapter fitted: the residual is small, so storage error weighs most).

`--slice-npz` (written by `benchmarks.cache_size --save-attn`) adds the same error table on the
random-weight 7B slice's attention (32 heads × |T| × 144) with the `near` student built from it.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
import zarr

from benchmarks.common import write_outputs
from cache_schema import Encoding
from cache_schema import codecs as C
from student_train.adapters import HeadAdapter
from student_train.losses import attention_distill_loss

# label → (mode, codec[, code transform]); the reference is f32. Transforms (bytes only: the
# decoded values are the mode's): "rowdelta" stores each code minus the code of the previous text
# row of the same head and vision token (mod 256; adjacent queries attend alike), "zstd:19" a
# slower zstd level. Measured here before any becomes a store codec.
ENCODINGS = {
    "f32": ("f32", "blosc:zstd:3:bitshuffle"),
    "f16": ("f16", "blosc:zstd:3:bitshuffle"),
    "u8 + zstd": ("u8", "zstd:3"),
    "u8sqrt + zstd (stored default)": ("u8sqrt", "zstd:3"),
    "u8sqrt + bitshuffle": ("u8sqrt", "blosc:zstd:3:bitshuffle"),
    "u6 + bitshuffle": ("u6", "blosc:zstd:3:bitshuffle"),
    "u6sqrt + bitshuffle": ("u6sqrt", "blosc:zstd:3:bitshuffle"),
    "u5sqrt + bitshuffle": ("u5sqrt", "blosc:zstd:3:bitshuffle"),
    "u4 + bitshuffle": ("u4", "blosc:zstd:3:bitshuffle"),
    "u4sqrt + bitshuffle": ("u4sqrt", "blosc:zstd:3:bitshuffle"),
    "u8sqrt + zstd:19": ("u8sqrt", "zstd:19"),
    "u8sqrt row-delta + zstd": ("u8sqrt", "zstd:3", "rowdelta"),
    "u8sqrt row-delta + bitshuffle": ("u8sqrt", "blosc:zstd:3:bitshuffle", "rowdelta"),
    "u6sqrt row-delta + bitshuffle": ("u6sqrt", "blosc:zstd:3:bitshuffle", "rowdelta"),
    "u4sqrt row-delta + bitshuffle": ("u4sqrt", "blosc:zstd:3:bitshuffle", "rowdelta"),
}


def _transform(q: np.ndarray, how: str | None) -> np.ndarray:
    """q: [H, r, c] codes → the bytes to compress (invertible: a cumulative sum mod 256 undoes rowdelta)."""
    if how is None or q.ndim != 3 or q.shape[1] < 2:
        return q
    d = q.copy()
    d[:, 1:] = (q[:, 1:].astype(np.int16) - q[:, :-1].astype(np.int16)).astype(np.uint8)  # mod 256
    return d


def _zarr_bytes(root: Path, name: str, flat: np.ndarray, codec: str, chunk_bytes: int) -> int:
    """On-disk bytes of a 1-D array stored the way a cache unit stores it (chunk files only)."""
    path = root / name
    chunk = max(1, min(len(flat), chunk_bytes // flat.dtype.itemsize))
    arr = zarr.create_array(store=str(path), shape=flat.shape, chunks=(chunk,), dtype=flat.dtype,
                            compressors=C.codec_chain(codec, typesize=flat.dtype.itemsize))
    arr[:] = flat
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.name != "zarr.json")


def encoded_bits(blocks: list[np.ndarray], mode: str, codec: str, tmp: Path, transform: str | None = None) -> dict:
    """Bits per attention entry on disk (values + per-row scales) and the decoded blocks."""
    enc = Encoding()
    codes, scales, dec = [], [], []
    for a in blocks:
        q, s = C.encode_attn(a, mode)
        codes.append(_transform(q, transform).ravel())
        if s is not None:
            scales.append(s.ravel())
        dec.append(C.decode_attn(q, s, mode))
    n = sum(a.size for a in blocks)
    v = _zarr_bytes(tmp, f"{mode}-{codec}-{transform}-v", np.concatenate(codes), codec, enc.chunk_bytes_large)
    s = _zarr_bytes(tmp, f"{mode}-{codec}-{transform}-s", np.concatenate(scales), enc.logits_codec, enc.chunk_bytes_small) if scales else 0
    return {"bits_per_entry": 8.0 * (v + s) / n, "value_bits": 8.0 * v / n, "scale_bits": 8.0 * s / n, "decoded": dec}


def fit_adapter(student: list[torch.Tensor], teacher: list[torch.Tensor], h_s: int, h_t: int) -> HeadAdapter:
    """Least-squares 1×1 conv over every entry of every sample: teacher[o] ≈ Σ_h W[o, h]·student[h] + b[o]."""
    x = torch.cat([torch.cat([s.flatten(1) for s in student], 1), torch.ones(1, sum(s[0].numel() for s in student))]).double()
    y = torch.cat([t.flatten(1) for t in teacher], 1).double()
    sol = torch.linalg.lstsq(x.T, y.T).solution  # [H_s + 1, H_t]
    ad = HeadAdapter(h_s, h_t)
    with torch.no_grad():
        ad.conv.weight.copy_(sol[:-1].T[:, :, None, None].float())
        ad.conv.bias.copy_(sol[-1].float())
    return ad


def near_student(teacher: list[torch.Tensor], h_s: int, noise: float = 0.1, seed: int = 0) -> list[torch.Tensor]:
    """Head-group averages of the teacher with multiplicative noise, rows renormalised to the teacher's mass."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in teacher:
        h_t, r, c = t.shape
        s = t.reshape(h_s, h_t // h_s, r, c).mean(1)
        s = s * torch.exp(noise * torch.randn(s.shape, generator=g))
        mass = t.reshape(h_s, h_t // h_s, r, c).mean(1).sum(-1, keepdim=True)
        out.append(s / s.sum(-1, keepdim=True).clamp_min(1e-12) * mass)
    return out


def loss_and_grad(student: list[torch.Tensor], teacher: list[torch.Tensor], ad: HeadAdapter) -> tuple[float, torch.Tensor]:
    xs = [s.clone().requires_grad_(True) for s in student]
    ad.zero_grad()
    loss = attention_distill_loss(xs, teacher, ad)
    params = [ad.conv.weight, ad.conv.bias]
    grads = torch.autograd.grad(loss, xs + params)
    return loss.item(), torch.cat([g.flatten() for g in grads]).double()


def _angle(g0: torch.Tensor, g1: torch.Tensor) -> float:
    cos = float(torch.dot(g0, g1) / (g0.norm() * g1.norm()))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def error_table(teacher_np: list[np.ndarray], students: dict[str, tuple[list[torch.Tensor], HeadAdapter]],
                encodings: dict[str, tuple[str, str]], recomputed: dict[str, list[np.ndarray]] | None = None) -> dict:
    """Per encoding: bits/entry on disk, max |error|, and per student the loss/gradient error vs f32.
    recomputed: label → blocks the student recomputes instead of reading (0 bits per entry)."""
    teacher = [torch.from_numpy(a) for a in teacher_np]
    ref = {name: loss_and_grad(s, teacher, ad) for name, (s, ad) in students.items()}
    rows = {}
    todo = list(encodings.items()) + [(k, ("recompute", "-", v)) for k, v in (recomputed or {}).items()]
    with tempfile.TemporaryDirectory(prefix="attn_codec_") as tmp:
        for label, (mode, codec, *how) in todo:
            if mode == "recompute":
                e = {"bits_per_entry": 0.0, "value_bits": 0.0, "scale_bits": 0.0, "decoded": how.pop()}
            else:
                e = encoded_bits(teacher_np, mode, codec, Path(tmp), how[0] if how else None)
            dec = [torch.from_numpy(np.ascontiguousarray(d)) for d in e.pop("decoded")]
            row = {"mode": mode, "codec": codec, **e,
                   "max_abs_err": max(float((d - t).abs().max()) for d, t in zip(dec, teacher) if t.numel()),
                   "students": {}}
            for name, (s, ad) in students.items():
                l0, g0 = ref[name]
                l1, g1 = loss_and_grad(s, dec, ad)
                row["students"][name] = {"loss": l0, "loss_rel_err": abs(l1 - l0) / l0, "grad_angle_deg": _angle(g0, g1),
                                         "grad_rel_err": float((g1 - g0).norm() / g0.norm())}
            rows[label] = dict(row, transform=how[0] if how else None)
    return rows


@torch.inference_mode()
def toy_attention(teacher_dir: str, student_dir: str, world: Path, n_records: int, batch: int = 16) -> tuple[list, list, dict, list]:
    """First-layer T→V blocks of teacher and student over the world's first `n_records` eval records,
    and the teacher's blocks as an attention-recompute store's student recomputes them (the teacher
    projector and first-layer weights only, over the tower's features of the same batch)."""
    from PIL import Image
    from transformers import AutoTokenizer

    from benchmarks.synth import first_layer_of
    from evaluation.heldout import pad_encoded
    from pipeline.models import CaptureSpec, MobileVLM, preprocess_image
    from pipeline.templates import encode_conversation
    from student_train.teacher_projector import TeacherFirstLayer, TeacherTokens

    tok = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    teacher, student = MobileVLM.from_pretrained(teacher_dir).eval(), MobileVLM.from_pretrained(student_dir).eval()
    records = json.loads((world / "data" / "eval.json").read_text())[:n_records]
    spec = CaptureSpec(("first",), ("tv",))
    t_blocks, s_blocks, r_blocks = [], [], []
    tokens = TeacherTokens({k: v.float().numpy() for k, v in teacher.model.mm_projector.state_dict().items()},
                           teacher.num_vision_tokens, "cpu")
    tokens.capture(student.vision_tower)  # the student's tower: the features training has at hand
    first = TeacherFirstLayer(*first_layer_of(teacher), tokens, ("tv",), "cpu")
    for i in range(0, len(records), batch):
        rs = records[i:i + batch]
        ids, lab, am = pad_encoded([encode_conversation(r["conversations"], "v1", tok, True) for r in rs])
        imgs = []
        for r in rs:
            with Image.open(world / "images" / r["image"]) as im:
                imgs.append(preprocess_image(im.convert("RGB"), teacher.config))
        imgs = torch.stack(imgs)
        tokens.reset()
        for model, out in ((teacher, t_blocks), (student, s_blocks)):
            al = model.forward_align(input_ids=ids, images=imgs, attention_mask=am, labels=None, spec=spec)
            out += [a.float().contiguous() for a in al.attn[("first", "tv")]]
        r_blocks += [a.numpy() for a in first.attention(ids, imgs, am)[("first", "tv")]]
    shapes = {"teacher_heads": teacher.config.num_attention_heads, "student_heads": student.config.num_attention_heads,
              "n_vision": int(t_blocks[0].shape[-1]), "mean_n_text": float(np.mean([b.shape[1] for b in t_blocks])),
              "records": len(t_blocks)}
    return t_blocks, s_blocks, shapes, r_blocks


def row_stats(blocks: list[torch.Tensor]) -> dict:
    """How peaked the teacher's rows are (why compression and sqrt-companding behave as they do)."""
    rows = torch.cat([b.reshape(-1, b.shape[-1]) for b in blocks if b.numel()])
    p = rows / rows.sum(-1, keepdim=True).clamp_min(1e-12)
    ent = -(p * p.clamp_min(1e-30).log()).sum(-1)
    return {"mean_row_entropy_nats": float(ent.mean()), "uniform_entropy_nats": math.log(rows.shape[-1]),
            "mean_row_max_over_mass": float((rows.max(-1).values / rows.sum(-1).clamp_min(1e-12)).mean())}


def real_width_mb(row: dict, n_vision: int, n_text: float, heads: int = 32, real_vision: int = 144) -> float:
    """MB/sample of one [32, |T|, 144] block at these bits: value bits per entry carry over, the
    per-row scale's bits are per row (so rescaled from this part's |V| to 144 entries a row)."""
    rows = heads * n_text
    return (row["value_bits"] * rows * real_vision + row["scale_bits"] * n_vision * rows) / 8 / 1e6


def to_markdown(rep: dict) -> str:
    out = []
    for part, res in rep["parts"].items():
        studs = list(next(iter(res["encodings"].values()))["students"])
        st = res["row_stats"]
        out += [f"### {part}", "", res["what"], f"Rows: mean entropy {st['mean_row_entropy_nats']:.2f} nats "
                f"(uniform {st['uniform_entropy_nats']:.2f}), mean row max / row mass {st['mean_row_max_over_mass']:.3f}.", "",
                "| encoding | value bits/entry | scale bits/entry | real-width MB/sample | max abs err | " + " | ".join(
                    f"{s}: L_attn rel err | {s}: grad angle °" for s in studs) + " |",
                "|---|---:|---:|---:|---:|" + "---:|---:|" * len(studs)]
        for label, r in res["encodings"].items():
            cells = " | ".join(f"{v['loss_rel_err']:.1e} | {v['grad_angle_deg']:.3f}" for v in r["students"].values())
            mb = real_width_mb(r, res["n_vision"], rep["real_n_text"])
            out.append(f"| {label} | {r['value_bits']:.2f} | {r['scale_bits']:.2f} | {mb:.3f} | {r['max_abs_err']:.1e} | {cells} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.attn_codec", description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", help="a trained toy teacher checkpoint")
    ap.add_argument("--note", default="", help="how the teacher was trained (printed with its table)")
    ap.add_argument("--student", help="a toy student checkpoint (e.g. <world>/student_init)")
    ap.add_argument("--world", help="the toy world the teacher was trained on")
    ap.add_argument("--records", type=int, default=64)
    ap.add_argument("--slice-npz", default=None, help="attention of the random 7B slice (benchmarks.cache_size --save-attn)")
    ap.add_argument("--near-noise", type=float, default=0.1, help="the `near` student's multiplicative noise σ")
    ap.add_argument("--real-n-text", type=float, default=232.0, help="mean |T| for the real-width MB column")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/attn_codec")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    rep: dict = {"command": "python -m benchmarks.attn_codec " + " ".join(argv or []), "real_n_text": a.real_n_text, "parts": {}}
    if a.teacher:
        t, s, shapes, rec = toy_attention(a.teacher, a.student, Path(a.world), a.records)
        h_s, h_t = shapes["student_heads"], shapes["teacher_heads"]
        studs = {"init": (s, HeadAdapter(h_s, h_t)), "fitted": (s, fit_adapter(s, t, h_s, h_t))}
        near = near_student(t, h_s, noise=a.near_noise)
        studs["near"] = (near, fit_adapter(near, t, h_s, h_t))
        rep["parts"][f"toy teacher {Path(a.teacher).name}"] = {
            "what": (f"Toy teacher `{a.teacher}` {a.note}, {shapes['records']} held-out records, {h_t} heads × mean |T| "
                     f"{shapes['mean_n_text']:.1f} × |V| {shapes['n_vision']}; student `{a.student}` ({h_s} heads)."),
            "shapes": shapes, "n_vision": shapes["n_vision"], "row_stats": row_stats(t),
            "encodings": error_table([x.numpy() for x in t], studs, ENCODINGS,
                                     {"recomputed (cache v2 default: teacher weights kept once)": rec})}
    if a.slice_npz:
        z = np.load(a.slice_npz)
        t = [torch.from_numpy(z[k]) for k in sorted(z.files)]
        near = near_student(t, 16, noise=a.near_noise)
        studs = {"init": (near, HeadAdapter(16, 32)), "near": (near, fit_adapter(near, t, 16, 32))}
        rep["parts"]["random 7B slice"] = {
            "what": (f"Random-weight 2-layer 7B slice (benchmarks.cache_size), {len(t)} samples, 32 heads × mean |T| "
                     f"{np.mean([x.shape[1] for x in t]):.1f} × 144; student = its 16 head-pair averages × 10% noise."),
            "n_vision": int(t[0].shape[-1]), "row_stats": row_stats(t),
            "encodings": error_table([x.numpy() for x in t], studs, ENCODINGS)}
    write_outputs(a.out, "attn_codec", rep, to_markdown(rep))
    return rep


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
