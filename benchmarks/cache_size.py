"""Bytes per sample of a real cache store at the released 7B teacher's widths, measured on disk.

    PYTHONPATH=. .venv/bin/python -m benchmarks.cache_size --samples 16 --out results/cache_size

The teacher is a 2-layer slice of MobileVLM V2 7B built from the project's preset
(`mobilevlm_v2_7b_config`: hidden 4096, 32 heads, ffn 11008, vocab 32000, LDPv2 projector pooling
to 144 vision tokens) with the released CLIP ViT-L/14-336 tower's architecture. **Every weight
is random** (no checkpoint is readable here), and so are the token ids and the pixels; sequence
lengths follow the layout of `benchmarks.synth` (<s>, prefix, <image>, |T| text tokens whose last
|R| are the answer) with |T| and |R| set by flags (defaults: the means the issue measured on its
slice store, 232 and 197, ±10%).

What is real: the dump's own code path — `forward_align` capturing the first layer's text→vision
attention, `teacher_dump.reduce.reduce_batch` (focus, top-k with the bucket tail, projector
tokens) — and the store: `cache_schema`'s writer into a zarr store on disk, one unit per batch,
finalised. The same reduced targets are written once per encoding (the default first), so the
encodings are compared on identical values.

Reported per encoding: on-disk bytes of every array (chunk/shard files summed) and grouped into
attention, vision (projector) tokens, top-k logits and focus; the per-array compression ratio
(stored-dtype bytes before the codec / on-disk bytes); `du` of the whole store; and the
projection to the Short subset (3.61 M samples), with vision tokens per sample (one image per
sample, as this store holds) and per unique image (1.25 M images shared by the samples).

Random weights matter for the attention bytes: a random teacher's first-layer attention is close
to uniform, so its codes are high-entropy and compress poorly. `benchmarks.attn_codec` measures
the same codecs on a trained (toy) teacher's attention.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import write_outputs
from benchmarks.storage import _array_bytes
from benchmarks.synth import Arch, Setting, bench_provenance, configs, first_layer_of, make_batches
from cache_schema import CacheStore, Encoding
from cache_schema.schema import encode_sample, validate_image
from pipeline.models import CaptureSpec, MobileVLM
from pipeline.positions import sample_index
from teacher_dump.reduce import BatchMeta, ReduceSpec, reduce_batch

SHORT_SAMPLES = 3_610_000  # paper Table 2, Short subset
SHORT_IMAGES = 1_250_000  # unique images the Short subset's samples share
GROUPS = {"attention": ("attn_first_tv", "attn_first_tv_scale"), "vision": ("image_tokens",),
          "logits": ("topk_ids", "topk_logprobs", "tail_logmass"), "focus": ("focus",)}
# label → (Encoding, projector_tokens, attention): the default first (cache v2: the student
# recomputes the teacher's projector tokens and first-layer attention from teacher weights kept
# once); the rest are what the v1 layout, a lossless or a cheaper stored-attention cache holds
ENCODINGS = {
    "default": (Encoding(), "recompute", "recompute"),
    "attention stored (u8sqrt)": (Encoding(), "recompute", "stored"),
    "v1 layout (all stored)": (Encoding(), "stored", "stored"),
    "lossless": (Encoding.lossless(), "recompute", "recompute"),
    "lossless (all stored)": (Encoding.lossless(), "stored", "stored"),
    "u6sqrt + bitshuffle": (Encoding(attn="u6sqrt", attn_codec="blosc:zstd:3:bitshuffle"), "recompute", "stored"),
    "u5sqrt + bitshuffle": (Encoding(attn="u5sqrt", attn_codec="blosc:zstd:3:bitshuffle"), "recompute", "stored"),
    "u4sqrt + bitshuffle": (Encoding(attn="u4sqrt", attn_codec="blosc:zstd:3:bitshuffle"), "recompute", "stored"),
}
assert not any("," in k for k in ENCODINGS), "--encodings takes a comma-separated list of these labels"


def slice_setting(n_samples: int, batch: int, n_text: int, n_resp: int, layers: int = 2) -> Setting:
    """The 7B teacher's widths, `layers` layers, 144 tokens, CLIP-L/14-336 (the student is unused)."""
    return Setting("7B slice", student=Arch(1, 2048, 16, 5632), teacher=Arch(layers, 4096, 32, 11008), vocab=32000,
                   grid=12, batch=batch, prefix=35, n_text=n_text, n_resp=n_resp,
                   n_batches=max(1, -(-n_samples // batch)), real_vision=True)


def tiny_setting(n_samples: int, batch: int) -> Setting:
    """Script test only (toy tower, 2 × 128 teacher): the numbers mean nothing."""
    return Setting("tiny", student=Arch(1, 64, 2, 128), teacher=Arch(2, 128, 4, 256), vocab=256, grid=4, batch=batch,
                   prefix=4, n_text=12, n_resp=4, n_batches=max(1, -(-n_samples // batch)))


@torch.inference_mode()
def teacher_targets(s: Setting, seed: int = 0, log=print) -> tuple[MobileVLM, list, list, dict]:
    """Build the random slice and reduce its outputs exactly as the dump does → (teacher, samples, images, timing)."""
    from toy_world.presets import write_vision_tower

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cache_size_tower_") as vt:
        # real_vision: the released tower's architecture, no directory read; else a toy tower config
        _, tcfg = configs(s, Path(vt) if s.real_vision else write_vision_tower(Path(vt) / "clip"))
        torch.manual_seed(seed)
        teacher = MobileVLM(tcfg).eval()
    t_build = time.perf_counter() - t0
    n_params = sum(p.numel() for p in teacher.parameters())
    log(f"[cache_size] built the slice: {n_params / 1e6:.0f}M parameters in {t_build:.0f} s")
    prov = bench_provenance(teacher, topk=64, focus_k=16)
    spec = ReduceSpec(attn_keys=prov.attn_keys, focus_k=prov.focus_k, logits_topk=prov.logits_topk)  # f32 wires
    cap, nv = CaptureSpec(("first",), ("tv",)), teacher.num_vision_tokens
    samples, images = [], []
    t1 = time.perf_counter()
    for j, b in enumerate(make_batches(s, teacher.image_size, seed=seed)):
        al = teacher.forward_align(input_ids=b.input_ids, images=b.images, attention_mask=b.attention_mask,
                                   labels=None, spec=cap)
        n = b.attention_mask.sum(1).tolist()
        index = [sample_index(b.input_ids[i, :n[i]].numpy(), b.labels[i, :n[i]].numpy(), nv) for i in range(len(b))]
        meta = BatchMeta(sample_ids=b.sample_ids, token_hashes=["benchmark"] * len(b),
                         image_hashes=[f"img-{sid}" for sid in b.sample_ids], emit_image=[True] * len(b))
        sm, im = reduce_batch(al, index, meta, spec)
        samples += sm
        images += im
        log(f"[cache_size] batch {j + 1}/{s.n_batches}: {len(samples)} samples, {time.perf_counter() - t1:.0f} s")
    return teacher, samples, images, {"build_s": t_build, "forward_s": time.perf_counter() - t1, "params": n_params}


def _du_bytes(path: Path) -> int:
    """`du -sb`: apparent bytes of everything under the store (metadata, index, commits included)."""
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def measure_store(teacher: MobileVLM, samples: list, images: list, enc: Encoding, path: Path,
                  projector_tokens: str = "recompute", attention: str = "recompute") -> dict:
    """Write the targets into a finalised store at `path` with `enc` and measure it. The teacher
    weights a store keeps once (<store>/projector/, <store>/first_layer/) are reported apart: per
    sample they are their bytes / the store's samples, which a real store's millions make nil."""
    prov = replace(bench_provenance(teacher, topk=64, focus_k=16, encoding=enc), projector_tokens=projector_tokens,
                   vision_tower_fingerprint="benchmark", attention=attention)
    projector = {k: v.detach().float().numpy() for k, v in teacher.model.mm_projector.state_dict().items()}
    first = first_layer_of(teacher) if attention == "recompute" else None
    store = CacheStore.create_or_open(path, prov, projector=projector, first_layer=first)
    raw: dict[str, int] = {}  # stored-dtype bytes before the codec, from the schema's own encoder
    per_unit = 4
    for u in range(0, len(samples), per_unit):
        sm = samples[u:u + per_unit]
        hs = {s.image_hash for s in sm}
        with store.unit_writer(f"u{u // per_unit:04d}") as w:
            for h, tok in images:
                if h in hs and projector_tokens == "stored":
                    w.add_image(h, tok)
                    raw["image_tokens"] = raw.get("image_tokens", 0) + validate_image(h, tok, prov).nbytes
                elif h in hs:
                    w.add_image(h, None)
            for s in sm:
                if attention == "recompute":
                    s = replace(s, attn={})
                w.add_sample(s)
                for name, arr in encode_sample(s, prov)[1].items():
                    raw[name] = raw.get(name, 0) + arr.nbytes
    store.finalize([s.sample_id for s in samples])
    disk = _array_bytes(path)
    n, n_img = len(samples), len(images)
    arrays = {a: {"disk_bytes_per_sample": disk.get(a, 0) / n, "raw_bytes_per_sample": raw.get(a, 0) / n,
                  "ratio": raw.get(a, 0) / disk[a] if disk.get(a) else None} for a in sorted(set(disk) | set(raw))}
    groups = {g: sum(arrays.get(a, {}).get("disk_bytes_per_sample", 0.0) for a in names) for g, names in GROUPS.items()}
    g_raw = {g: sum(arrays.get(a, {}).get("raw_bytes_per_sample", 0.0) for a in names) for g, names in GROUPS.items()}
    projector_bytes = _du_bytes(path / "projector")
    first_bytes = _du_bytes(path / "first_layer") if (path / "first_layer").exists() else 0
    du = _du_bytes(path) - projector_bytes - first_bytes  # per-sample bytes; the teacher weights are once per store
    per_sample = du / n
    vision_per_image = groups["vision"] * n / n_img
    other = per_sample - groups["vision"]  # everything stored per sample (incl. index/metadata)
    return {
        "encoding": enc.to_dict(), "samples": n, "images": n_img, "arrays": arrays,
        "groups_bytes_per_sample": groups, "groups_ratio": {g: (g_raw[g] / groups[g] if groups[g] else None) for g in groups},
        "projector_tokens": projector_tokens, "attention": attention, "projector_bytes_once": projector_bytes,
        "first_layer_bytes_once": first_bytes,
        "du_bytes": du, "du_bytes_per_sample": per_sample, "arrays_bytes_per_sample": sum(disk.values()) / n,
        "projection_short": {
            "samples": SHORT_SAMPLES, "images": SHORT_IMAGES,
            "tb_vision_per_sample": per_sample * SHORT_SAMPLES / 1e12,
            "tb_vision_per_image": (other * SHORT_SAMPLES + vision_per_image * SHORT_IMAGES) / 1e12,
        },
    }


def _mb(x: float) -> str:
    return f"{x / 1e6:.3f}"


def to_markdown(rep: dict) -> str:
    sh = rep["shapes"]
    lines = [f"{rep['samples']} samples, mean |T| {sh['mean_n_text']:.1f}, mean |R| {sh['mean_n_resp']:.1f}, "
             f"|V| {sh['n_vision']}, {sh['heads']} heads, hidden {sh['hidden']}, vocab {sh['vocab']}, top-{sh['topk']}, "
             f"focus {sh['focus_k']}; slice {rep['timing']['params'] / 1e6:.0f}M parameters, random weights.", "",
             "du MB/sample: the store's `du -sb` less the teacher weights it keeps once (last column), / samples.", "",
             "| encoding | projector tokens | attention | attention MB | vision MB | logits kB | focus B | du MB/sample "
             "| Short TB (tokens per sample) | Short TB (per image) | teacher weights MB once |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, m in rep["encodings"].items():
        g, p = m["groups_bytes_per_sample"], m["projection_short"]
        once = m["projector_bytes_once"] + m["first_layer_bytes_once"]
        lines.append(f"| {label} | {m['projector_tokens']} | {m['attention']} | {_mb(g['attention'])} | {_mb(g['vision'])} | "
                     f"{g['logits'] / 1e3:.1f} | {g['focus']:.0f} | {_mb(m['du_bytes_per_sample'])} | "
                     f"{p['tb_vision_per_sample']:.2f} | {p['tb_vision_per_image']:.2f} | {_mb(once)} |")
    lines += ["", "Per array, default encoding (bytes per sample; ratio = stored-dtype bytes / on-disk bytes):", "",
              "| array | on disk | before codec | ratio |", "|---|---:|---:|---:|"]
    for a, v in rep["encodings"]["default"]["arrays"].items():
        r = f"{v['ratio']:.2f}" if v["ratio"] else "-"
        lines.append(f"| {a} | {v['disk_bytes_per_sample']:.0f} | {v['raw_bytes_per_sample']:.0f} | {r} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--n-text", type=int, default=232, help="mean |T| (text after the image, answer included)")
    ap.add_argument("--n-resp", type=int, default=197, help="mean |R| (supervised answer tokens)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="a toy-sized teacher (script test; numbers meaningless)")
    ap.add_argument("--encodings", default=",".join(ENCODINGS), help="comma-separated labels of ENCODINGS")
    ap.add_argument("--out", default="results/cache_size")
    ap.add_argument("--save-attn", default=None, help="also save the f32 first-layer T→V blocks here (.npz, for benchmarks.attn_codec)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    s = tiny_setting(a.samples, a.batch) if a.tiny else slice_setting(a.samples, a.batch, a.n_text, a.n_resp, a.layers)
    teacher, samples, images, timing = teacher_targets(s)
    samples, images = samples[:a.samples], images[:a.samples]
    if a.save_attn:
        np.savez(a.save_attn, **{f"s{i:03d}": x.attn[("first", "tv")] for i, x in enumerate(samples)})
    rep = {"command": "python -m benchmarks.cache_size " + " ".join(argv if argv is not None else []),
           "samples": len(samples), "timing": timing, "random_weights": True, "tiny": a.tiny,
           "shapes": {"n_vision": teacher.num_vision_tokens, "hidden": teacher.config.hidden_size,
                      "heads": teacher.config.num_attention_heads, "vocab": teacher.config.vocab_size, "topk": 64,
                      "focus_k": 16, "layers": s.teacher.layers,
                      "mean_n_text": float(np.mean([x.n_text for x in samples])),
                      "mean_n_resp": float(np.mean([x.n_resp for x in samples]))},
           "encodings": {}}
    with tempfile.TemporaryDirectory(prefix="cache_size_") as tmp:
        for label in a.encodings.split(","):
            enc, tokens, attention = ENCODINGS[label]
            rep["encodings"][label] = measure_store(teacher, samples, images, enc, Path(tmp) / f"{len(rep['encodings'])}.zarr",
                                                    tokens, attention)
            print(f"[cache_size] {label}: {rep['encodings'][label]['du_bytes_per_sample'] / 1e6:.3f} MB/sample (du)")
    write_outputs(a.out, "cache_size", rep, to_markdown(rep))
    return rep


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
