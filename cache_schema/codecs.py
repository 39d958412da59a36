"""Encodings of the cached targets: value dtypes/quantisation and the zarr codec chains.

Every stored array is 1-D (ragged samples concatenated, see schema.py). Value encodings:

attention (probabilities in [0, 1]; one "row" = the last axis of a [H, r, c] block, e.g. one text
query's weights over the |V| vision keys):
  f32     lossless
  f16     float16; |err| <= 2^-11·x (+2^-25 for subnormals)
  u8      uint8 per-row linear, scale m = row max (float32):  x̂ = q/255·m;     |err| <= m/510
  u8sqrt  uint8 per-row in the sqrt domain:  q = round(255·sqrt(x/m)), x̂ = (q/255)²·m;
          |err| <= m/255 near the row max but far finer for small x (step ≈ m·(2q+1)/255²)
  low-bit (opt-in; LOWBIT_ATTN_MODES): the same two maps with L = 2^b - 1 levels instead of 255,
  u6 / u6sqrt (L = 63), u5 / u5sqrt (L = 31) and u4 / u4sqrt (L = 15). Codes are stored one per uint8, so the layout
  is the u8 one; pair them with a bit-shuffling codec ("blosc:zstd:3:bitshuffle"): the 8 - b
  always-zero bit planes then cost nothing, and the rest is entropy coded plane by plane.
          u<b>      |err| <= m/(2L)
          u<b>sqrt  |err| <= m·(2q+1)/(2L²) <= m/L (q = the stored code); values below
                    m/(4L²) decode to 0, so a row keeps its mass only to within that per entry
logprobs (top-k log p): f32 lossless | f16 (|err| <= 2^-11·|x|, i.e. relative error of p ≈ 5e-4·|log p|)
vision tokens [|V|, D]: f32 lossless | f16 (writer rejects |x| > 65504) | bf16 (8-bit mantissa,
  round-to-nearest-even, stored as uint16)
ids: uint16 when vocab_size <= 65536 else int32; focus: uint16; tail_logmass: always float32.

Codec chains (bytes → bytes, each followed by crc32c so every chunk carries a checksum):
  "none" | "zstd:<level>" | "blosc:<cname>:<level>:<noshuffle|shuffle|bitshuffle>"
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

ATTN_MODES = ("f32", "f16", "u8", "u8sqrt")
# opt-in, fewer levels per code (benchmarks/attn_codec.py measures their loss/gradient error);
# kept apart from ATTN_MODES so the default tables and checks that enumerate it do not change
LOWBIT_ATTN_MODES = ("u6", "u6sqrt", "u5", "u5sqrt", "u4", "u4sqrt")
# quantised mode → (levels L, sqrt-companded)
_QUANT = {"u8": (255, False), "u8sqrt": (255, True), "u6": (63, False), "u6sqrt": (63, True),
          "u5": (31, False), "u5sqrt": (31, True), "u4": (15, False), "u4sqrt": (15, True)}
LOGPROB_MODES = ("f32", "f16")
VISION_MODES = ("f32", "f16", "bf16")
_F16_MAX = 65504.0


@dataclass(frozen=True)
class Encoding:
    """How values are stored. Part of the provenance: a store has one encoding throughout.

    Defaults were chosen by `alignkd cache size-table` (cache_schema/README.md, "Sizes").
    """

    attn: str = "u8sqrt"
    logprobs: str = "f16"
    vision: str = "f16"
    attn_codec: str = "zstd:3"
    logits_codec: str = "blosc:zstd:3:shuffle"
    vision_codec: str = "blosc:zstd:3:shuffle"
    # decoded bytes per inner chunk; random access reads ~1-2 chunks of each array per sample
    chunk_bytes_large: int = 1 << 20  # attention, vision tokens
    chunk_bytes_small: int = 1 << 16  # focus, top-k ids/logprobs, tail mass
    shard_chunks: int = 64  # inner chunks per shard file (fewer files on shared filesystems)

    @staticmethod
    def lossless(**overrides: object) -> "Encoding":
        """float32 everywhere (zstd), bit-exact round trip."""
        base = dict(attn="f32", logprobs="f32", vision="f32", attn_codec="blosc:zstd:3:shuffle",
                    vision_codec="blosc:zstd:3:shuffle")
        base.update(overrides)
        return Encoding(**base)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        problems = []
        for name, allowed in (("attn", ATTN_MODES + LOWBIT_ATTN_MODES), ("logprobs", LOGPROB_MODES), ("vision", VISION_MODES)):
            if getattr(self, name) not in allowed:
                problems.append(f"{name}={getattr(self, name)!r} (allowed: {', '.join(allowed)})")
        for name in ("attn_codec", "logits_codec", "vision_codec"):
            try:
                codec_chain(getattr(self, name), typesize=4)
            except ValueError as e:
                problems.append(f"{name}: {e}")
        for name in ("chunk_bytes_large", "chunk_bytes_small", "shard_chunks"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)!r} (a positive int)")
        if problems:
            raise ValueError("invalid cache Encoding: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "Encoding":
        names = {f.name for f in fields(Encoding)}
        unknown, missing = set(d) - names, names - set(d)
        if unknown or missing:
            raise ValueError(f"encoding dict: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
        return Encoding(**d)


def codec_chain(spec: str, typesize: int) -> list:
    """Codec spec string → zarr v3 bytes-to-bytes codecs, always ending with crc32c."""
    parts = spec.split(":")
    if parts[0] == "none" and len(parts) == 1:
        chain: list = []
    elif parts[0] == "zstd" and len(parts) == 2 and parts[1].isdigit():
        chain = [ZstdCodec(level=int(parts[1]))]
    elif parts[0] == "blosc" and len(parts) == 4 and parts[2].isdigit():
        cname, level, shuffle = parts[1], int(parts[2]), parts[3]
        if cname not in ("zstd", "lz4", "lz4hc", "blosclz", "zlib") or shuffle not in (
            "noshuffle", "shuffle", "bitshuffle"
        ):
            raise ValueError(f"unknown blosc cname/shuffle in codec spec {spec!r}")
        chain = [BloscCodec(cname=cname, clevel=level, shuffle=shuffle, typesize=typesize)]
    else:
        raise ValueError(
            f"bad codec spec {spec!r}: use 'none', 'zstd:<level>' or "
            "'blosc:<cname>:<level>:<noshuffle|shuffle|bitshuffle>'"
        )
    return chain + [Crc32cCodec()]


# ---- attention -------------------------------------------------------------------------------

def attn_dtype(mode: str) -> np.dtype:
    if mode in _QUANT:
        return np.dtype(np.uint8)
    return np.dtype({"f32": np.float32, "f16": np.float16}[mode])


def attn_has_scale(mode: str) -> bool:
    return mode in _QUANT


def attn_levels(mode: str) -> int | None:
    """Number of quantisation steps L of a quantised mode (codes 0..L), None for float modes."""
    return _QUANT[mode][0] if mode in _QUANT else None


def encode_attn(x: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """x: [..., c] float32 in [0, 1] → (values [..., c] stored dtype, per-row scale [...] f32 or None)."""
    if mode == "f32":
        return np.ascontiguousarray(x, dtype=np.float32), None
    if mode == "f16":
        return x.astype(np.float16), None
    levels, companded = _QUANT[mode]
    m = x.max(axis=-1) if x.shape[-1] else np.zeros(x.shape[:-1], np.float32)  # [...]
    m = m.astype(np.float32)
    safe = np.where(m > 0, m, 1.0)[..., None]
    r = np.clip(x / safe, 0.0, 1.0)
    if companded:
        r = np.sqrt(r)
    q = np.rint(r * float(levels)).astype(np.uint8)
    return q, m


def decode_attn(q: np.ndarray, scale: np.ndarray | None, mode: str) -> np.ndarray:
    """Inverse of encode_attn: [..., c] float32."""
    if mode in ("f32", "f16"):
        return q.astype(np.float32)
    levels, companded = _QUANT[mode]
    r = q.astype(np.float32) * np.float32(1.0 / levels)
    if companded:
        r = r * r
    return r * scale.astype(np.float32)[..., None]


# ---- log-probs, vision tokens --------------------------------------------------------------------

def logprob_dtype(mode: str) -> np.dtype:
    return np.dtype(np.float32 if mode == "f32" else np.float16)


def vision_dtype(mode: str) -> np.dtype:
    return np.dtype({"f32": np.float32, "f16": np.float16, "bf16": np.uint16}[mode])


def ids_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.int32)


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns (uint16), round to nearest even (finite inputs)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((u >> 16) & 1) + np.uint32(0x7FFF)
    return ((u + rounding) >> 16).astype(np.uint16)


def from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def encode_vision(x: np.ndarray, mode: str) -> np.ndarray:
    if mode == "f32":
        return np.ascontiguousarray(x, dtype=np.float32)
    if mode == "f16":
        return x.astype(np.float16)
    return to_bf16_bits(x)


def decode_vision(v: np.ndarray, mode: str) -> np.ndarray:
    return from_bf16_bits(v) if mode == "bf16" else v.astype(np.float32)


def f16_overflow(x: np.ndarray) -> float | None:
    """The largest |x| when it does not fit float16, else None."""
    m = float(np.abs(x).max()) if x.size else 0.0
    return m if m > _F16_MAX else None
