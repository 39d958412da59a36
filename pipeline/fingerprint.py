"""Content fingerprints that travel in the cache's provenance and the manifest.

A fingerprint is a short hex digest of bytes on disk, so a store can be checked against a
checkpoint or tokenizer without loading either (and, for the teacher, without opening its weights
when only the config is at hand: see `config_fingerprint`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

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
