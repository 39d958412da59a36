"""Tiny synthetic teacher targets for the cache_schema tests (importable by spawned writer processes)."""

from __future__ import annotations

import numpy as np

from cache_schema import CacheStore, Encoding, Provenance, SampleTargets

H, V, D, VOCAB, K, FOCUS = 2, 9, 6, 50, 4, 3

# small chunks/shards so every test crosses chunk and shard boundaries
TINY_CHUNKS = dict(chunk_bytes_large=1024, chunk_bytes_small=128, shard_chunks=2)


def make_prov(encoding: Encoding | None = None, blocks=("first.tv",), **kw) -> Provenance:
    base = dict(
        teacher_fingerprint="teacher0", teacher_config_fingerprint="cfg0", tokenizer_fingerprint="tok0",
        manifest_fingerprint="man0", templates=("v1",), subset="short", max_length=64,
        num_vision_tokens=V, teacher_heads=H, teacher_hidden_size=D, vocab_size=VOCAB,
        logits_topk=K, focus_k=FOCUS, attn_blocks=blocks,
        encoding=encoding or Encoding.lossless(**TINY_CHUNKS),
        created_by="pytest", created_at="2025-01-01T00:00:00+00:00",
    )
    base.update(kw)
    return Provenance(**base)


def _rows(rng, shape, n_keys):
    """Softmax rows over n_keys keys restricted to the first shape[-1] of them: [..., c]."""
    logits = rng.normal(0, 2.0, size=shape[:-1] + (n_keys,))
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return p[..., : shape[-1]].astype(np.float32)


def make_sample(sid: str, rng: np.random.Generator, prov: Provenance, image_hash: str | None = "img0",
                n_text: int | None = None, n_resp: int | None = None) -> SampleTargets:
    t = (int(rng.integers(1, 6)) if n_text is None else n_text) if image_hash else 0
    r = int(rng.integers(0, 5)) if n_resp is None else n_resp
    v, h = prov.num_vision_tokens, prov.teacher_heads
    L = t + (v if image_hash else 0) + 3
    attn = {}
    for layer, block in prov.attn_keys:
        shape = {"tv": (h, t, v), "vv": (h, v, v) if image_hash else (h, 0, 0), "tt": (h, t, t),
                 "full": (h, L, L)}[block]
        attn[(layer, block)] = _rows(rng, shape, shape[-1] + 5)
    k = min(prov.logits_topk, prov.vocab_size)
    logits = rng.normal(0, 3, size=(r, prov.vocab_size))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ids = np.argsort(-logp, axis=-1)[:, :k]
    lp = np.take_along_axis(logp, ids, -1)
    tail = np.log1p(-np.exp(lp).sum(-1))
    nf = min(prov.focus_k, v) if image_hash else 0
    focus = np.sort(rng.choice(v, nf, replace=False)).astype(np.int64)
    return SampleTargets(sample_id=sid, token_hash=f"th-{sid}", image_hash=image_hash, n_text=t, attn=attn,
                         focus=focus, topk_ids=ids.astype(np.int64), topk_logprobs=lp.astype(np.float32),
                         tail_logmass=tail.astype(np.float32))


def make_image(rng: np.random.Generator, prov: Provenance) -> np.ndarray:
    return rng.normal(0, 1.5, size=(prov.num_vision_tokens, prov.teacher_hidden_size)).astype(np.float32)


def gen_unit(prov: Provenance, unit_id: str, sample_ids: list[str], seed: int):
    """Deterministic unit content: (images {hash: tokens}, samples in order). Images are named
    after the unit and shared by pairs of samples; every third sample has no image."""
    rng = np.random.default_rng(seed)
    images, samples = {}, []
    for i, sid in enumerate(sample_ids):
        img = None if i % 3 == 2 else f"{unit_id}-img{i // 2}"
        if img and img not in images:
            images[img] = make_image(rng, prov)
        samples.append(make_sample(sid, rng, prov, image_hash=img))
    return images, samples


def write_unit(store: CacheStore, unit_id: str, sample_ids: list[str], seed: int) -> dict:
    """Write gen_unit's content as one unit; returns {sample_id or image hash: data}."""
    images, samples = gen_unit(store.provenance, unit_id, sample_ids, seed)
    with store.unit_writer(unit_id) as w:
        for h, tok in images.items():
            w.add_image(h, tok)
        for s in samples:
            w.add_sample(s)
    return {**images, **{s.sample_id: s for s in samples}}
