"""Units of work: the subset's manifest rows cut into fixed-size, deterministic units.

A unit is what one actor computes and one cache_schema writer commits atomically, so it is also
the grain of resume (a complete unit is never redone) and of retry (a failed actor's unit is run
again from scratch). The plan is a pure function of the manifest rows and `dump.unit_size`:
re-running makes the same units with the same ids, which is what lets resume skip by id.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from cache_schema import Provenance

# manifest columns an actor needs to build and check a sample (docs/CONTRACTS.md, Manifest)
SAMPLE_COLUMNS = (
    "sample_id",
    "image_path",
    "image_hash",
    "input_ids",
    "labels",
    "token_hash",
    "embedded_len",
    "n_text_after_image",
    "n_response",
)


@dataclass(frozen=True)
class Unit:
    """One unit of work.

    unit_id: "u000017": the unit's ordinal in the plan, zero-padded so ids sort like units.
    indices: its rows in the subset table (samples sorted by embedded length, then id).
    sample_ids: those rows' ids, in the same order.
    owned_images: image hashes whose projector tokens this unit writes (each hash is owned by
             exactly one unit: the first one, in plan order, with a sample that uses it).
    rows:    the rows themselves (SAMPLE_COLUMNS -> python lists), filled by `Plan.materialize`
             just before the unit is sent to an actor, so the driver never holds 3.6M samples'
             token lists as python objects (the Arrow table stays columnar).
    """

    unit_id: str
    indices: tuple[int, ...]
    sample_ids: tuple[str, ...]
    owned_images: tuple[str, ...]
    rows: dict[str, list] | None = None

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True)
class Plan:
    subset: str
    units: list[Unit]
    table: pa.Table  # the subset's rows (at least SAMPLE_COLUMNS)
    n_samples: int
    n_images: int  # unique image hashes in the subset
    n_tokens: int  # Σ embedded_len over the subset (teacher work, up to padding)

    def sample_ids(self) -> list[str]:
        return [s for u in self.units for s in u.sample_ids]

    def materialize(self, unit: Unit) -> Unit:
        """The unit with its rows attached (what an actor receives)."""
        rows = self.table.select(list(SAMPLE_COLUMNS)).take(list(unit.indices)).to_pydict()
        return replace(unit, rows=rows)


def make_plan(table: pa.Table, subset: str, unit_size: int) -> Plan:
    """Cut the subset's rows (`table`, already filtered to `in_{subset}`) into units.

    Sorting by (embedded_len, sample_id) puts samples of similar length next to each other, so
    the batches an actor cuts from a unit pad little; the id breaks ties so the order (and so
    every unit's content) does not depend on the manifest's row order.
    """
    if unit_size < 1:
        raise ValueError(f"dump.unit_size must be ≥ 1, got {unit_size}")
    ids = table.column("sample_id").to_pylist()
    if len(set(ids)) != len(ids):
        dup = next(s for s, n in Counter(ids).items() if n > 1)
        raise ValueError(f"manifest subset {subset!r} repeats sample_id {dup!r}: rebuild the manifest")
    lengths = np.asarray(table.column("embedded_len").to_numpy(), dtype=np.int64)
    hashes = table.column("image_hash").to_pylist()
    order = sorted(range(len(ids)), key=lambda i: (int(lengths[i]), ids[i]))

    units: list[Unit] = []
    seen: set[str] = set()
    for u, start in enumerate(range(0, len(order), unit_size)):
        take = tuple(order[start : start + unit_size])
        owned = []
        for i in take:
            h = hashes[i]
            if h and h not in seen:  # "" = text-only sample, no image to own
                seen.add(h)
                owned.append(h)
        units.append(Unit(f"u{u:06d}", take, tuple(ids[i] for i in take), tuple(owned)))
    return Plan(subset=subset, units=units, table=table, n_samples=len(ids), n_images=len(seen),
                n_tokens=int(lengths.sum()))


def plan_digest(plan: Plan) -> str:
    """Digest of which samples and images each unit holds: resume is only sound when it matches."""
    h = hashlib.sha256()
    for u in plan.units:
        h.update(u.unit_id.encode() + b"\0" + "\0".join(u.sample_ids).encode() + b"\1" + "\0".join(u.owned_images).encode() + b"\n")
    return h.hexdigest()[:16]


def projected_bytes(plan: Plan, prov: "Provenance") -> dict[str, int]:
    """Bytes the store will hold before compression, per target kind (from the manifest's
    |T|, |R| and L_emb; the store's encodings decide the element sizes)."""
    from cache_schema import codecs as C

    enc, h, v, d = prov.encoding, prov.teacher_heads, prov.num_vision_tokens, prov.teacher_hidden_size
    k = min(prov.logits_topk, prov.vocab_size)
    col = lambda c: np.asarray(plan.table.column(c).to_numpy(), dtype=np.int64)
    img = np.asarray([bool(x) for x in plan.table.column("image_hash").to_pylist()])
    t, n_r, length = np.where(img, col("n_text_after_image"), 0), col("n_response"), col("embedded_len")
    a_item, scale = C.attn_dtype(enc.attn).itemsize, 4 if C.attn_has_scale(enc.attn) else 0
    attn = 0
    for _, block in prov.stored_attn_keys:  # none when the student recomputes them
        rows, cols = {"tv": (t, v), "vv": (img * v, img * v), "tt": (t, t), "full": (length, length)}[block]
        attn += int((h * rows * (cols * a_item + scale)).sum())
    item = C.ids_dtype(prov.vocab_size).itemsize + C.logprob_dtype(enc.logprobs).itemsize
    out = {
        "attention": attn,
        "focus": int(2 * min(prov.focus_k, v) * img.sum()),
        "topk": int((n_r * (k * item + 4)).sum()),
        "image_tokens": plan.n_images * v * d * C.vision_dtype(enc.vision).itemsize if prov.projector_tokens == "stored" else 0,
    }
    out["total"] = sum(out.values())
    return out
