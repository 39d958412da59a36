"""Content fingerprints that travel in the cache's provenance and the manifest.

A fingerprint is a short hex digest of bytes on disk, so a store can be checked against a
checkpoint or tokenizer without loading either (and, for the teacher, without opening its weights
when only the config is at hand: see `config_fingerprint`). The exception is `vocab_fingerprint`,
a digest of the loaded vocabulary, so that the same pieces shipped as a SentencePiece
tokenizer.model or as a tokenizer.json compare equal.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _digest(parts: list[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for name, data in parts:
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer_dir: str | Path) -> str:
    """Digest of the tokenizer files present in `tokenizer_dir` (vocabulary, merges, specials)."""
    d = Path(tokenizer_dir)
    parts = [(n, (d / n).read_bytes()) for n in _TOKENIZER_FILES if (d / n).is_file()]
    if not parts:
        raise FileNotFoundError(f"no tokenizer files ({', '.join(_TOKENIZER_FILES)}) in {d}")
    return _digest(parts)


# the special tokens whose ids the manifest's rows depend on: <s> and </s> the templates write,
# <unk> what text outside the vocabulary becomes. (Padding is masked, so pad may differ: the
# releases ship pad_token null, our exports pad with <unk>.)
_ID_SPECIALS = ("bos_token", "eos_token", "unk_token")


def vocab_pairs(tokenizer: Any) -> list[tuple[int, str]]:
    """(id, piece) of a loaded tokenizer's whole vocabulary, added tokens included, sorted by id.
    Read from the loaded tokenizer, so a tokenizer.model and the tokenizer.json converted from
    it give the same list."""
    return sorted((i, t) for t, i in tokenizer.get_vocab().items())


def vocab_digest(tokenizer: Any) -> str:
    """Digest of a loaded tokenizer's (id, piece) list and the ids of <s>, </s>, <unk>."""
    specials = [(name, getattr(tokenizer, name, None), getattr(tokenizer, name + "_id", None)) for name in _ID_SPECIALS]
    return _digest([("vocab", json.dumps(vocab_pairs(tokenizer), ensure_ascii=False).encode()),
                    ("specials", json.dumps(specials, ensure_ascii=False).encode())])


def vocab_fingerprint(tokenizer_dir: str | Path) -> str:
    """Digest of a tokenizer's vocabulary by content (which id is which piece, and which ids <s>,
    </s> and <unk> are), not of its files or settings.

    Teacher and student must agree on ids, nothing more: a release directory shipping LLaMA's
    SentencePiece tokenizer.model and a directory holding the tokenizer.json converted from it
    get the same digest, and so do two checkpoints whose tokenizer_config.json files differ in
    model_max_length or padding side (`tokenizer_fingerprint`, over all the files, tells those
    apart). Loads the tokenizer (pipeline.tokenizer_load): FileNotFoundError when the directory
    holds neither tokenizer.json nor tokenizer.model, TokenizerLoadError when it cannot be read.
    """
    from pipeline.tokenizer_load import has_tokenizer, load_tokenizer  # transformers

    if not has_tokenizer(tokenizer_dir):
        raise FileNotFoundError(f"no tokenizer vocabulary (tokenizer.model or tokenizer.json) in {tokenizer_dir}")
    return vocab_digest(load_tokenizer(tokenizer_dir))


def vocab_size(tokenizer: Any) -> int:
    """Largest token id + 1 of a loaded tokenizer (what a model's vocab_size must hold)."""
    pairs = vocab_pairs(tokenizer)
    return pairs[-1][0] + 1 if pairs else 0


def tokenizer_size(tokenizer_dir: str | Path) -> int:
    """Largest token id + 1 of the tokenizer in `tokenizer_dir`, in either format (loads it:
    FileNotFoundError / TokenizerLoadError as `vocab_fingerprint`)."""
    from pipeline.tokenizer_load import has_tokenizer, load_tokenizer

    if not has_tokenizer(tokenizer_dir):
        raise FileNotFoundError(f"no tokenizer vocabulary (tokenizer.model or tokenizer.json) in {tokenizer_dir}")
    return vocab_size(load_tokenizer(tokenizer_dir))


def config_fingerprint(model_dir: str | Path) -> str:
    """Digest of a checkpoint's config.json alone (architecture, not weights)."""
    p = Path(model_dir) / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"no config.json in {model_dir}")
    return _digest([("config.json", p.read_bytes())])


def checkpoint_fingerprint(model_dir: str | Path) -> str:
    """Digest of config.json and every weight file (reads the weights once: ~1 min for 14 GB)."""
    d = Path(model_dir)
    files = ["config.json"] + sorted(p.name for p in d.iterdir() if p.name.endswith(_WEIGHT_SUFFIXES))
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {d}")
    h = hashlib.sha256()
    for name in files:
        h.update(name.encode() + b"\0")
        with open(d / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()[:16]


def token_fingerprint(input_ids: "list[int]", labels: "list[int]") -> str:
    """Digest of one sample's token ids and labels: how the cache proves it saw the same sample."""
    h = hashlib.sha256()
    h.update(",".join(map(str, input_ids)).encode() + b"|" + ",".join(map(str, labels)).encode())
    return h.hexdigest()[:16]


def subset_fingerprint(sample_ids: "list[str]", token_hashes: "list[str]", image_hashes: "list[str | None]") -> str:
    """Digest of a manifest subset's (sample_id, token_hash, image_hash) triples, order-independent:
    the cache's `manifest_fingerprint` (what the cached targets depend on, and nothing else; a
    manifest rebuilt from the same data keeps it). Must equal teacher_dump.manifest.subset_fingerprint
    (tests/pipeline/test_subset_fingerprint.py holds the two together)."""
    h = hashlib.sha256()
    for sid, th, ih in sorted(zip(sample_ids, token_hashes, image_hashes)):
        h.update(f"{sid}\0{th}\0{ih}\n".encode())
    return h.hexdigest()[:16]


def manifest_subset_fingerprint(manifest: str | Path, subset: str) -> str:
    """`subset_fingerprint` of the `in_<subset>` rows of a manifest parquet (three columns read)."""
    import pyarrow.compute as pc  # pyarrow: not at CLI start

    from pipeline.data.contract import read_manifest

    t = read_manifest(manifest, ["sample_id", "token_hash", "image_hash", f"in_{subset}"])
    t = t.filter(pc.field(f"in_{subset}"))
    return subset_fingerprint(*(t.column(c).to_pylist() for c in ("sample_id", "token_hash", "image_hash")))


def tower_fingerprint(model_dir: str | Path) -> str:
    """Digest of a checkpoint's frozen CLIP tower as it computes features: its weights (as float32,
    by name and shape, so the same CLIP weights shipped in bf16 or fp32-of-bf16 compare equal; an
    fp32 tower rounded to bf16 does not), the feature layer (mm_vision_select_layer) and the
    image size. Two checkpoints with equal tower fingerprints give the same patch features for the
    same pixels, which is what lets the cache recompute the teacher's projector tokens from the
    student's tower (cache.projector_tokens: recompute). Reads only the tower's tensors."""
    import torch

    from pipeline.models.checkpoint import OURS_VISION, read_tensors
    from pipeline.models.config import load_config, resolve_vision_config

    cfg = load_config(model_dir)
    tensors = read_tensors(model_dir, lambda k: k.startswith(OURS_VISION))
    if not tensors:
        raise FileNotFoundError(f"{model_dir}: its weights hold no vision tower ({OURS_VISION}*) tensors")
    h = hashlib.sha256()
    h.update(f"select_layer={cfg.mm_vision_select_layer};image_size={resolve_vision_config(cfg).image_size}\0".encode())
    for name in sorted(tensors):
        t = tensors[name].to(torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)}\0".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]
