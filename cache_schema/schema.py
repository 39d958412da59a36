"""The per-unit layout: which 1-D arrays a unit holds, how a sample is validated, encoded into
them and decoded back. Pure numpy; the zarr I/O lives in writer.py / reader.py.

Ragged storage: each sample's [H, r, c] block (or [R, k] top-k table, ...) is raveled in C order
and appended to one flat 1-D array per unit; its element count follows from the per-sample dims
in the unit's commit record (`element_counts`), so offsets are a cumsum and nothing is padded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cache_schema import codecs as C
from cache_schema.errors import SampleValidationError
from cache_schema.provenance import Provenance

AttnKey = tuple[str, str]  # (layer, block), e.g. ("first", "tv")


@dataclass
class SampleTargets:
    """One sample's teacher targets (what `UnitWriter.add_sample` takes and `CacheReader.get` returns).

    attn:          {(layer, block): [H_t, r, c] float32}, exactly the store's `attn_blocks`;
                   tv [H, |T|, |V|], vv [H, |V|, |V|], tt [H, |T|, |T|], full [H, L, L]
                   (image-less samples: tv/vv with zero rows)
    focus:         [min(focus_k, |V|)] int, ascending vision-token indices ([0] if no image)
    topk_ids:      [|R|, k] int, k = min(logits_topk, vocab_size), by decreasing probability
    topk_logprobs: [|R|, k] float32 log p
    tail_logmass:  [|R|] float32 log(1 - Σ_k p) (-inf allowed)
    n_text:        |T|, text positions after the image (0 without an image)
    The reader returns attn/logprobs/tail as float32 and focus/topk_ids as int64.
    """

    sample_id: str
    token_hash: str
    image_hash: str | None
    n_text: int
    attn: dict[AttnKey, np.ndarray] = field(default_factory=dict)
    focus: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    topk_ids: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    topk_logprobs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    tail_logmass: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    @property
    def n_resp(self) -> int:
        return int(self.topk_ids.shape[0])


@dataclass(frozen=True)
class ArraySpec:
    """One 1-D array of a unit group. kind: "sample" (one slice per sample) or "image"."""

    name: str
    kind: str
    dtype: np.dtype
    codec: str
    chunk_elems: int


def attn_name(key: str) -> str:
    return "attn_" + key.replace(".", "_")


def topk_width(prov: Provenance) -> int:
    return min(prov.logits_topk, prov.vocab_size)


def unit_arrays(prov: Provenance) -> list[ArraySpec]:
    """The arrays every unit of a store holds, in a fixed order."""
    enc = prov.encoding

    def spec(name: str, kind: str, dtype: np.dtype, codec: str, large: bool) -> ArraySpec:
        nbytes = enc.chunk_bytes_large if large else enc.chunk_bytes_small
        return ArraySpec(name, kind, np.dtype(dtype), codec, max(1, nbytes // np.dtype(dtype).itemsize))

    out = []
    for key in prov.stored_attn_blocks:
        out.append(spec(attn_name(key), "sample", C.attn_dtype(enc.attn), enc.attn_codec, True))
        if C.attn_has_scale(enc.attn):
            out.append(spec(attn_name(key) + "_scale", "sample", np.float32, enc.logits_codec, False))
    out += [
        spec("focus", "sample", np.uint16, enc.logits_codec, False),
        spec("topk_ids", "sample", C.ids_dtype(prov.vocab_size), enc.logits_codec, False),
        spec("topk_logprobs", "sample", C.logprob_dtype(enc.logprobs), enc.logits_codec, False),
        spec("tail_logmass", "sample", np.float32, enc.logits_codec, False),
    ]
    if prov.projector_tokens == "stored":  # "recompute": the student rebuilds them (projector.py)
        out.append(spec("image_tokens", "image", C.vision_dtype(enc.vision), enc.vision_codec, True))
    return out


def dims_columns(prov: Provenance) -> list[str]:
    """Per-sample integer columns of the commit record that fix every array's slice length."""
    cols = ["n_text", "n_resp", "n_focus"]
    for key in prov.stored_attn_blocks:
        cols += [f"rows_{attn_name(key)}", f"cols_{attn_name(key)}"]
    return cols


def element_counts(prov: Provenance, dims: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """dims columns [N] → per-sample element count [N] int64 of every "sample" array."""
    h, k = prov.teacher_heads, topk_width(prov)
    d = {c: np.asarray(v, dtype=np.int64) for c, v in dims.items()}
    out: dict[str, np.ndarray] = {}
    for key in prov.stored_attn_blocks:
        n = attn_name(key)
        out[n] = h * d[f"rows_{n}"] * d[f"cols_{n}"]
        if C.attn_has_scale(prov.encoding.attn):
            out[n + "_scale"] = h * d[f"rows_{n}"]
    out["focus"] = d["n_focus"]
    out["topk_ids"] = d["n_resp"] * k
    out["topk_logprobs"] = d["n_resp"] * k
    out["tail_logmass"] = d["n_resp"]
    return out


def _expected_attn_shape(block: str, s: SampleTargets, prov: Provenance, got: tuple) -> tuple | None:
    """The [H, r, c] the block must have, or None when any shape of that form is fine (full)."""
    h, v, t = prov.teacher_heads, prov.num_vision_tokens, s.n_text
    has_img = bool(s.image_hash)
    if block == "tv":
        return (h, t, v) if has_img else (h, 0, got[2] if len(got) == 3 else v)
    if block == "vv":
        return (h, v, v) if has_img else (h, 0, 0)
    if block == "tt":
        return (h, t, t)
    return (h, got[1], got[1]) if len(got) == 3 else (h, -1, -1)  # full: square, L >= |T|


def validate_sample(s: SampleTargets, prov: Provenance) -> None:
    """Raise SampleValidationError listing every problem of `s` (dtype, shape, range)."""
    p: list[str] = []
    if not isinstance(s.sample_id, str) or not s.sample_id:
        p.append(f"sample_id must be a non-empty str, got {s.sample_id!r}")
    if not isinstance(s.token_hash, str) or not s.token_hash:
        p.append(f"token_hash must be a non-empty str, got {s.token_hash!r}")
    if s.image_hash is not None and not isinstance(s.image_hash, str):
        p.append(f"image_hash must be str or None, got {type(s.image_hash).__name__}")
    if not isinstance(s.n_text, (int, np.integer)) or s.n_text < 0:
        p.append(f"n_text must be an int >= 0, got {s.n_text!r}")
    elif not s.image_hash and s.n_text != 0:
        p.append(f"n_text={s.n_text} but the sample has no image (|T| counts text after the image)")
    keys = {f"{a}.{b}" for a, b in s.attn}
    if keys != set(prov.stored_attn_blocks):
        p.append(f"attn keys {sorted(keys)} != the store's stored attn_blocks {list(prov.stored_attn_blocks)}")
    for (layer, block), a in s.attn.items():
        name = f"attn[{layer!r}, {block!r}]"
        if not isinstance(a, np.ndarray) or a.dtype != np.float32:
            p.append(f"{name} must be a float32 numpy array, got {getattr(a, 'dtype', type(a).__name__)}")
            continue
        want = _expected_attn_shape(block, s, prov, a.shape)
        if a.ndim != 3 or a.shape != want:
            p.append(f"{name} shape {a.shape} != expected {want} (H_t, rows, cols)")
        elif a.size and not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0 + 1e-5):
            p.append(f"{name} must hold probabilities in [0, 1] (finite); min {a.min()}, max {a.max()}")
    nf = min(prov.focus_k, prov.num_vision_tokens) if s.image_hash else 0
    f = s.focus
    if not isinstance(f, np.ndarray) or f.dtype.kind not in "iu" or f.shape != (nf,):
        p.append(f"focus must be an int array of shape ({nf},), got "
                 f"{getattr(f, 'dtype', type(f).__name__)} {getattr(f, 'shape', '')}")
    elif nf and (f.min() < 0 or f.max() >= prov.num_vision_tokens or len(np.unique(f)) != nf):
        p.append(f"focus values must be distinct indices in [0, {prov.num_vision_tokens}), got {f.tolist()}")
    k = topk_width(prov)
    ids, lp, tail = s.topk_ids, s.topk_logprobs, s.tail_logmass
    r = ids.shape[0] if isinstance(ids, np.ndarray) and ids.ndim == 2 else -1
    if not isinstance(ids, np.ndarray) or ids.dtype.kind not in "iu" or ids.shape != (r, k):
        p.append(f"topk_ids must be an int array [|R|, {k}], got {getattr(ids, 'dtype', '?')} {getattr(ids, 'shape', '')}")
    elif ids.size and (ids.min() < 0 or ids.max() >= prov.vocab_size):
        p.append(f"topk_ids out of [0, {prov.vocab_size}): min {ids.min()}, max {ids.max()}")
    if not isinstance(lp, np.ndarray) or lp.dtype != np.float32 or lp.shape != (max(r, 0), k):
        p.append(f"topk_logprobs must be float32 [{max(r, 0)}, {k}], got {getattr(lp, 'dtype', '?')} {getattr(lp, 'shape', '')}")
    elif lp.size and (np.isnan(lp).any() or lp.max() > 1e-4):
        p.append("topk_logprobs must be log-probabilities (<= 0, no NaN)")
    if not isinstance(tail, np.ndarray) or tail.dtype != np.float32 or tail.shape != (max(r, 0),):
        p.append(f"tail_logmass must be float32 [{max(r, 0)}], got {getattr(tail, 'dtype', '?')} {getattr(tail, 'shape', '')}")
    elif tail.size and (np.isnan(tail).any() or tail.max() > 1e-4):
        p.append("tail_logmass must be log-masses (<= 0 or -inf, no NaN)")
    if prov.encoding.logprobs == "f16" and isinstance(lp, np.ndarray) and lp.size and lp.dtype == np.float32:
        if np.nanmin(lp[np.isfinite(lp)], initial=0.0) < -65504.0:
            p.append("topk_logprobs below -65504 do not fit the store's f16 encoding")
    if p:
        raise SampleValidationError(f"sample {s.sample_id!r}: " + "; ".join(p))


def encode_sample(s: SampleTargets, prov: Provenance) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """Validate and encode → (dims columns, {array name: 1-D stored-dtype slice})."""
    validate_sample(s, prov)
    enc = prov.encoding
    dims = {"n_text": int(s.n_text), "n_resp": s.n_resp, "n_focus": int(s.focus.shape[0])}
    out: dict[str, np.ndarray] = {}
    for key, (layer, block) in zip(prov.stored_attn_blocks, prov.stored_attn_keys):
        a, n = s.attn[(layer, block)], attn_name(key)
        dims[f"rows_{n}"], dims[f"cols_{n}"] = int(a.shape[1]), int(a.shape[2])
        q, scale = C.encode_attn(a, enc.attn)
        out[n] = q.ravel()
        if scale is not None:
            out[n + "_scale"] = scale.ravel()
    out["focus"] = s.focus.astype(np.uint16)
    out["topk_ids"] = s.topk_ids.astype(C.ids_dtype(prov.vocab_size)).ravel()
    out["topk_logprobs"] = s.topk_logprobs.astype(C.logprob_dtype(enc.logprobs)).ravel()
    out["tail_logmass"] = s.tail_logmass.astype(np.float32)
    return dims, out


def decode_sample(meta: dict, raw: dict[str, np.ndarray], prov: Provenance) -> SampleTargets:
    """meta: one record row (sample_id, token_hash, image_hash, dims); raw: 1-D stored slices."""
    enc, h, k = prov.encoding, prov.teacher_heads, topk_width(prov)
    attn = {}
    for key, akey in zip(prov.stored_attn_blocks, prov.stored_attn_keys):
        n = attn_name(key)
        rows, cols = int(meta[f"rows_{n}"]), int(meta[f"cols_{n}"])
        q = raw[n].reshape(h, rows, cols)
        scale = raw[n + "_scale"].reshape(h, rows) if C.attn_has_scale(enc.attn) else None
        attn[akey] = C.decode_attn(q, scale, enc.attn)
    r = int(meta["n_resp"])
    return SampleTargets(
        sample_id=meta["sample_id"],
        token_hash=meta["token_hash"],
        image_hash=meta["image_hash"] or None,
        n_text=int(meta["n_text"]),
        attn=attn,
        focus=raw["focus"].astype(np.int64),
        topk_ids=raw["topk_ids"].reshape(r, k).astype(np.int64),
        topk_logprobs=raw["topk_logprobs"].reshape(r, k).astype(np.float32),
        tail_logmass=raw["tail_logmass"].astype(np.float32),
    )


def validate_image(image_hash: str, tokens: np.ndarray, prov: Provenance) -> np.ndarray:
    """Check [|V|, D_t] float32 finite (and f16 range) → encoded 1-D slice."""
    want = (prov.num_vision_tokens, prov.teacher_hidden_size)
    if not isinstance(image_hash, str) or not image_hash:
        raise SampleValidationError(f"image hash must be a non-empty str, got {image_hash!r}")
    if not isinstance(tokens, np.ndarray) or tokens.dtype != np.float32 or tokens.shape != want:
        raise SampleValidationError(
            f"image {image_hash!r}: tokens must be float32 {want}, got "
            f"{getattr(tokens, 'dtype', type(tokens).__name__)} {getattr(tokens, 'shape', '')}"
        )
    if not np.isfinite(tokens).all():
        raise SampleValidationError(f"image {image_hash!r}: tokens contain NaN/inf")
    if prov.encoding.vision == "f16" and (m := C.f16_overflow(tokens)) is not None:
        raise SampleValidationError(
            f"image {image_hash!r}: |token| up to {m:.4g} overflows float16; use encoding vision='bf16' or 'f32'"
        )
    return C.encode_vision(tokens, prov.encoding.vision).ravel()


def decode_image(raw: np.ndarray, prov: Provenance) -> np.ndarray:
    return C.decode_vision(raw, prov.encoding.vision).reshape(prov.num_vision_tokens, prov.teacher_hidden_size)
