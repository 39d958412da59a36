"""Content fingerprints that travel in the cache's provenance and the manifest.

A fingerprint is a short hex digest of bytes on disk, so a store can be checked against a
checkpoint or tokenizer without loading either (and, for the teacher, without opening its weights
when only the config is at hand: see `config_fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
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


def _vocab_pairs(tokenizer_json: Path) -> list[tuple[int, str]]:
    """(id, token) of a tokenizer.json's model vocabulary and added tokens, sorted by id."""
    tj = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    vocab = tj.get("model", {}).get("vocab") or {}
    # BPE / WordPiece: {token: id}; Unigram: [[piece, score], ...] with the position as id
    pairs = {(i, t) for t, i in vocab.items()} if isinstance(vocab, dict) else {(i, v[0]) for i, v in enumerate(vocab)}
    pairs |= {(t["id"], t["content"]) for t in tj.get("added_tokens", [])}
    return sorted(pairs)


def vocab_fingerprint(tokenizer_dir: str | Path) -> str:
    """Digest of a tokenizer's vocabulary alone (which id is which token), not of its settings.

    Teacher and student must agree on ids, nothing more: two checkpoints that ship LLaMA's
    vocabulary with different tokenizer_config.json files (model_max_length, padding side) get
    the same digest, where `tokenizer_fingerprint` tells them apart. The SentencePiece model
    (tokenizer.model, whose pieces are the vocabulary) is used when present, so that a checkpoint
    shipping it next to a converted tokenizer.json compares equal to one shipping it alone; else
    tokenizer.json's vocabulary and added tokens. (A tokenizer.model-only directory and a
    tokenizer.json-only one never compare equal: convert one, or give both the same files.)
    """
    d = Path(tokenizer_dir)
    if (d / "tokenizer.model").is_file():
        parts = [("tokenizer.model", (d / "tokenizer.model").read_bytes())]
        if (d / "added_tokens.json").is_file():
            added = json.loads((d / "added_tokens.json").read_text(encoding="utf-8"))
            parts.append(("added_tokens", json.dumps(sorted(added.items())).encode()))
        return _digest(parts)
    if (d / "tokenizer.json").is_file():
        return _digest([("vocab", json.dumps(_vocab_pairs(d / "tokenizer.json"), ensure_ascii=False).encode())])
    raise FileNotFoundError(f"no tokenizer vocabulary (tokenizer.model or tokenizer.json) in {d}")


def tokenizer_size(tokenizer_dir: str | Path) -> int | None:
    """Largest token id + 1 of a tokenizer.json (what a model's vocab_size must hold); None when
    the directory has no tokenizer.json (a SentencePiece model needs sentencepiece to be read)."""
    f = Path(tokenizer_dir) / "tokenizer.json"
    if not f.is_file():
        return None
    pairs = _vocab_pairs(f)
    return pairs[-1][0] + 1 if pairs else 0


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
    import pyarrow.compute as pc  # noqa: PLC0415  (pyarrow: not at CLI start)
    import pyarrow.parquet as pq  # noqa: PLC0415

    t = pq.read_table(manifest, columns=["sample_id", "token_hash", "image_hash", f"in_{subset}"])
    t = t.filter(pc.field(f"in_{subset}"))
    return subset_fingerprint(*(t.column(c).to_pylist() for c in ("sample_id", "token_hash", "image_hash")))
