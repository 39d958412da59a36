"""Provenance: what produced a store, stored in the root group's attributes and checked on every
open (writer: `CacheStore.create_or_open`; reader: `CacheReader(expect=...)`)."""

from __future__ import annotations

import datetime as _dt
import shlex
import sys
from dataclasses import dataclass, field, fields, replace

from cache_schema.codecs import Encoding
from cache_schema.errors import CacheVersionError, ProvenanceMismatch

# Bump on ANY change of the on-disk layout, array names, dtypes or record fields
# (tests/cache_schema/test_golden.py pins the layout so a silent change fails).
# 2: projector_tokens / vision_tower_fingerprint; the teacher projector's weights in <store>/projector/;
#    no image_tokens array when the tokens are recomputed. Version-1 stores are refused by name.
SCHEMA_VERSION = 2
FORMAT_NAME = "alignkd-teacher-cache"

ATTN_LAYERS = ("first", "last")
ATTN_BLOCKS = ("tv", "vv", "tt", "full")
# Informational fields: recorded, never compared.
INFO_FIELDS = ("created_by", "created_at")
# stored: the teacher's projector tokens [|V|, D_t] of every image are in the store (image_tokens);
# recompute: they are not; the student recomputes them with the teacher projector kept in the
# store, from its own tower's features (valid only for a tower with vision_tower_fingerprint)
PROJECTOR_TOKENS = ("stored", "recompute")
# stored: the attn_blocks' probabilities per sample (attn_* arrays); recompute: none; the student
# recomputes the teacher's first-layer attention from the teacher's embedding rows, layer-0 norm
# and q/k projections kept once in the store (first_layer/), over its recomputed projector tokens.
# Exact for first-layer blocks only, so recompute needs projector_tokens recompute and first.* blocks.
ATTENTION = ("stored", "recompute")


@dataclass(frozen=True)
class Provenance:
    """Everything a consumer must agree with before it trusts the cached targets.

    attn_blocks: "<layer>.<block>" keys (layer in first|last, block in tv|vv|tt|full); the
    default caches only what the default losses need (first-layer text→vision attention).
    """

    teacher_fingerprint: str  # pipeline.fingerprint.checkpoint_fingerprint(teacher dir)
    teacher_config_fingerprint: str  # config_fingerprint(teacher dir)
    tokenizer_fingerprint: str  # tokenizer_fingerprint(tokenizer dir)
    manifest_fingerprint: str  # digest of the manifest the dump ran on
    templates: tuple[str, ...]  # conversation templates present (e.g. ("plain", "v1"))
    subset: str  # manifest subset (e.g. "short", "long", "all")
    max_length: int  # embedded-length limit the manifest was built with
    num_vision_tokens: int  # |V|
    teacher_heads: int  # H_t
    teacher_hidden_size: int  # D_t (projector token width)
    vocab_size: int
    logits_topk: int = 64
    focus_k: int = 16
    attn_blocks: tuple[str, ...] = ("first.tv",)
    projector_tokens: str = "stored"  # one of PROJECTOR_TOKENS
    vision_tower_fingerprint: str = ""  # pipeline.fingerprint.tower_fingerprint(teacher dir)
    attention: str = "stored"  # one of ATTENTION
    encoding: Encoding = field(default_factory=Encoding)
    schema_version: int = SCHEMA_VERSION
    created_by: str = ""  # command line that created the store
    created_at: str = ""  # ISO-8601 UTC

    def __post_init__(self) -> None:
        object.__setattr__(self, "templates", tuple(self.templates))
        object.__setattr__(self, "attn_blocks", tuple(self.attn_blocks))
        problems = []
        for b in self.attn_blocks:
            layer, _, block = b.partition(".")
            if layer not in ATTN_LAYERS or block not in ATTN_BLOCKS:
                problems.append(f"attn_blocks entry {b!r} (use '<first|last>.<tv|vv|tt|full>')")
        if len(set(self.attn_blocks)) != len(self.attn_blocks):
            problems.append(f"attn_blocks has duplicates: {self.attn_blocks}")
        for name in ("max_length", "num_vision_tokens", "teacher_heads", "teacher_hidden_size",
                     "vocab_size", "logits_topk", "focus_k"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                problems.append(f"{name}={v!r} (a positive int)")
        if self.projector_tokens not in PROJECTOR_TOKENS:
            problems.append(f"projector_tokens={self.projector_tokens!r} (allowed: {', '.join(PROJECTOR_TOKENS)})")
        elif self.projector_tokens == "recompute" and not self.vision_tower_fingerprint:
            problems.append("projector_tokens='recompute' needs the teacher's vision_tower_fingerprint")
        if self.attention not in ATTENTION:
            problems.append(f"attention={self.attention!r} (allowed: {', '.join(ATTENTION)})")
        elif self.attention == "recompute" and (self.projector_tokens != "recompute" or
                                                 any(not b.startswith("first.") for b in self.attn_blocks)):
            problems.append(f"attention='recompute' needs projector_tokens 'recompute' and first-layer blocks only, "
                            f"got projector_tokens {self.projector_tokens!r}, attn_blocks {list(self.attn_blocks)}")
        if not isinstance(self.encoding, Encoding):
            problems.append(f"encoding must be an Encoding, got {type(self.encoding).__name__}")
        if problems:
            raise ValueError("invalid Provenance: " + "; ".join(problems))

    @property
    def attn_keys(self) -> tuple[tuple[str, str], ...]:
        """attn_blocks as the (layer, block) tuples used by SampleTargets.attn."""
        return tuple(tuple(b.split(".")) for b in self.attn_blocks)  # type: ignore[misc]

    @property
    def stored_attn_blocks(self) -> tuple[str, ...]:
        """The attn_blocks whose probabilities the units hold (none when attention is recomputed)."""
        return self.attn_blocks if self.attention == "stored" else ()

    @property
    def stored_attn_keys(self) -> tuple[tuple[str, str], ...]:
        return self.attn_keys if self.attention == "stored" else ()

    def stamped(self, created_by: str | None = None) -> "Provenance":
        """A copy with created_at = now (UTC) and created_by = the current command line."""
        now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
        cmd = created_by if created_by is not None else shlex.join(sys.argv)
        return replace(self, created_at=now, created_by=cmd)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["templates"] = list(self.templates)
        d["attn_blocks"] = list(self.attn_blocks)
        d["encoding"] = self.encoding.to_dict()
        return d

    @staticmethod
    def from_dict(d: dict, where: str = "provenance") -> "Provenance":
        """Strict: refuses an unknown schema version, unknown or missing keys."""
        got = d.get("schema_version")
        if got != SCHEMA_VERSION:
            raise CacheVersionError(f"{where}: {version_problem(got)}")
        names = {f.name for f in fields(Provenance)}
        unknown, missing = set(d) - names, names - set(d)
        if unknown or missing:
            raise CacheVersionError(
                f"{where}: provenance keys do not match schema {SCHEMA_VERSION}: "
                f"unknown {sorted(unknown)}, missing {sorted(missing)}"
            )
        d = dict(d)
        d["templates"] = tuple(d["templates"])
        d["attn_blocks"] = tuple(d["attn_blocks"])
        d["encoding"] = Encoding.from_dict(d["encoding"])
        return Provenance(**d)

    def identity(self) -> dict:
        """The compared fields (all but created_by/created_at), as plain JSON values."""
        d = self.to_dict()
        for k in INFO_FIELDS:
            d.pop(k)
        return d


def version_problem(got: object) -> str:
    """Why a store of schema version `got` is refused (one line, with the fix)."""
    old = " (version 1: stored projector tokens only, no teacher projector)" if got == 1 else ""
    return (f"schema_version expected {SCHEMA_VERSION}, got {got!r}{old}; this code reads only version "
            f"{SCHEMA_VERSION}: re-dump the teacher (`alignkd teacher-dump`), or use the alignkd version that wrote it")


def diff_provenance(expected: dict, got: "Provenance") -> dict[str, tuple[object, object]]:
    """Fields of `expected` (any subset of Provenance's, plain JSON values, nested `encoding`
    allowed as a partial dict) that differ from `got`. Unknown keys raise ValueError."""
    names = {f.name for f in fields(Provenance)}
    unknown = set(expected) - names
    if unknown:
        raise ValueError(f"expect has unknown provenance field(s) {sorted(unknown)}; known: {sorted(names)}")
    gd = got.to_dict()
    diffs: dict[str, tuple[object, object]] = {}
    for k, e in expected.items():
        if isinstance(e, Encoding):
            e = e.to_dict()
        if isinstance(e, tuple):
            e = list(e)
        if k == "encoding" and isinstance(e, dict):
            for ek, ev in e.items():
                if gd["encoding"].get(ek, object()) != ev:
                    diffs[f"encoding.{ek}"] = (ev, gd["encoding"].get(ek))
        elif gd[k] != e:
            diffs[k] = (e, gd[k])
    return diffs


def check_provenance(where: str, expected: dict | Provenance | None, got: Provenance) -> None:
    """Raise ProvenanceMismatch naming every differing field (expected vs got)."""
    if expected is None:
        return
    exp = expected.identity() if isinstance(expected, Provenance) else expected
    diffs = diff_provenance(exp, got)
    if diffs:
        raise ProvenanceMismatch(where, diffs)
