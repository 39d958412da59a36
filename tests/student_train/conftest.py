"""A tiny generated world for the student_train tests, built once per session with the real
components: `toy_world.world.build_world` (images, LLaVA JSON, tokenizer, random toy
checkpoints), `pipeline.data.manifest.build_manifest`, and stores written with `cache_schema`'s
writer from a real teacher `forward_align` reduced by `pipeline.targets` (independent of
teacher_dump, which these tests never import).

    def test_x(tiny_world, tiny_store):
        wf = tiny_world.workflow()               # frozen; with_overrides(wf, {...}) for a variant
        loader, n = build_train_loader(wf, "short", "finetune", "cached", 0, 1, 2, seed=0)

The teacher is the world's random `teacher_init` with its lm_head scaled by SHARPEN, so that its
next-token distribution is peaked like a trained LM's (entropy ≈ 1.4 nats instead of log|vocab| = 6):
the top-k truncation of the cache is then exercised as it would be on a real teacher.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

SHARPEN = 18.0  # lm_head scale of the test teacher: entropy ≈ 1.36 nats, top-64 mass ≈ 0.9994 at R
SUBSET = "short"
# A third dataset with a text-only record, so batches mix image and text-only samples.
EXTRA = [
    {"id": "txt0", "conversations": [{"from": "human", "value": "How many sides has a square?"},
                                     {"from": "gpt", "value": "A square has four sides."}]},
    {"id": "txt1", "conversations": [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "red"}]},
]


@dataclass
class TinyWorld:
    root: Path
    base: "object"  # pipeline.workflow.Workflow, cache.dir = root/cache, num_workers 0

    def workflow(self):
        """The base workflow (frozen: a test changes its own copy with `with_overrides`)."""
        return self.base

    def manifest_rows(self, subset: str = SUBSET) -> list[dict]:
        t = pq.read_table(self.base.data.manifest)
        return [r for r in t.to_pylist() if r[f"in_{subset}"]]

    def write_store(self, wf, subset: str = SUBSET, path: Path | None = None, encoding=None,
                    drop: tuple[str, ...] = (), token_hash_override: dict[str, str] | None = None,
                    batch_size: int = 4, projector_tokens: str = "stored", attention: str = "stored") -> Path:
        """Run the teacher over the subset's rows (minus `drop`) and write + finalise a store.
        projector_tokens "recompute": the teacher projector instead of its tokens, as the dump writes it."""
        return _write_store(wf, subset, Path(path or wf.cache_path(subset)), encoding, drop,
                            token_hash_override or {}, batch_size, self.manifest_rows(subset), projector_tokens,
                            attention)


def _build(root: Path):
    from pipeline.data.manifest import build_manifest
    from pipeline.models import MobileVLM
    from pipeline.workflow import DatasetConfig, load_workflow, with_overrides
    from toy_world.world import build_world

    wf = load_workflow("workflows/toy.yaml")
    w = root / "world"

    def moved(ds):  # a dataset's files, under this world
        return replace(ds, json=str(w / "data" / Path(ds.json).name), image_root=str(w / "images"))

    (root / "extra.json").write_text(json.dumps(EXTRA))
    wf = with_overrides(wf, {
        "world.dir": str(w), "world.n_images": 8, "world.n_eval_images": 2,
        "world.tower_steps": 0,  # a random tower: fast, and these tests need shapes, not vision
        "world.n_pretrain": 6, "world.n_finetune": 10, "world.n_eval": 2,
        "data.datasets": [*map(moved, wf.data.datasets),
                          DatasetConfig(name="toy_text", json=str(root / "extra.json"), image_root=str(w / "images"),
                                        template="v1", stage="finetune")],
        "data.eval": moved(wf.data.eval),
        "data.tokenizer": str(w / "tokenizer"),
        "data.manifest": str(root / "manifest.parquet"), "data.rejects": str(root / "rejects.jsonl"),
        "data.num_workers": 0,
    })
    build_world(wf)
    build_manifest(wf, command="pytest", progress=False)
    teacher = MobileVLM.from_pretrained(w / "teacher_init")
    with torch.no_grad():
        teacher.lm_head.weight.mul_(SHARPEN)
    teacher.save_pretrained(root / "teacher")
    return with_overrides(wf, {"models.teacher": str(root / "teacher"), "models.student": str(w / "student_init"),
                               "cache.dir": str(root / "cache"), "train.num_workers": 0})


def _batch(rows: list[dict], image_size: int, config) -> dict:
    from pipeline.constants import IGNORE_INDEX
    from pipeline.models import preprocess_image

    length = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    lab = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    am = torch.zeros(len(rows), length, dtype=torch.long)
    px = torch.zeros(len(rows), 3, image_size, image_size)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n], lab[i, :n], am[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
        if r["image_path"]:
            px[i] = preprocess_image(Image.open(r["image_path"]), config, image_size=image_size)
    any_img = any(r["image_path"] for r in rows)
    return dict(input_ids=ids, attention_mask=am, labels=lab, images=px if any_img else None)


def _write_store(wf, subset, path, encoding, drop, override, batch_size, rows, projector_tokens="stored",
                 attention="stored") -> Path:
    from cache_schema import CacheStore, Encoding, Provenance, SampleTargets
    from pipeline.fingerprint import (
        checkpoint_fingerprint,
        config_fingerprint,
        manifest_subset_fingerprint,
        tokenizer_fingerprint,
        tower_fingerprint,
    )
    from pipeline.models import CaptureSpec, MobileVLM
    from pipeline.targets import focus_indices, sparse_topk

    teacher = MobileVLM.from_pretrained(wf.models.teacher)
    cfg = teacher.config
    keys = [(l, b) for l in wf.cache.layers for b in wf.cache.blocks]
    prov = Provenance(
        teacher_fingerprint=checkpoint_fingerprint(wf.models.teacher),
        teacher_config_fingerprint=config_fingerprint(wf.models.teacher),
        tokenizer_fingerprint=tokenizer_fingerprint(wf.data.tokenizer),
        manifest_fingerprint=manifest_subset_fingerprint(wf.data.manifest, subset),  # of every row, as the dump
        templates=("plain", "v1"), subset=subset, max_length=wf.subset_limit(subset),
        num_vision_tokens=teacher.num_vision_tokens, teacher_heads=cfg.num_attention_heads,
        teacher_hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size, logits_topk=wf.cache.logits_topk,
        focus_k=wf.cache.focus_k, attn_blocks=tuple(f"{l}.{b}" for l, b in keys),
        encoding=encoding or Encoding(), projector_tokens=projector_tokens,
        vision_tower_fingerprint=tower_fingerprint(wf.models.teacher), attention=attention,
    )
    projector = {k: v.float().numpy() for k, v in teacher.model.mm_projector.state_dict().items()}
    first = None
    if attention == "recompute":  # what the dump keeps: embedding rows, layer-0 norm, q/k projections
        layer = teacher.model.layers[0]
        first = ({"embed_tokens.weight": teacher.model.embed_tokens.weight.detach().float().numpy(),
                  "input_layernorm.weight": layer.input_layernorm.weight.detach().float().numpy(),
                  **{f"{n}.{p}": t.detach().float().numpy() for n in ("q_proj", "k_proj")
                     for p, t in getattr(layer.self_attn, n).named_parameters()}},
                 json.loads((Path(wf.models.teacher) / "config.json").read_text()))
    store = CacheStore.create_or_open(path, prov, projector=projector, first_layer=first)
    spec = CaptureSpec(layers=tuple(dict.fromkeys(["first", *wf.cache.layers])),
                       blocks=tuple(dict.fromkeys(["tv", *wf.cache.blocks])))
    rows = [r for r in rows if r["sample_id"] not in drop]
    k = min(wf.cache.logits_topk, cfg.vocab_size)
    stored: set[str] = set()
    for u in range(0, len(rows), 2 * batch_size):  # two batches per unit: several units per store
        with store.unit_writer(f"u{u:04d}") as w, torch.no_grad():
            for b0 in range(u, min(u + 2 * batch_size, len(rows)), batch_size):
                chunk = rows[b0:b0 + batch_size]
                al = teacher.forward_align(**_batch(chunk, teacher.image_size, cfg), spec=spec)
                for i, r in enumerate(chunk):
                    ix, h = al.index[i], r["image_hash"]
                    resp = torch.from_numpy(ix.resp)
                    sd = sparse_topk(al.logits[i, resp], k)
                    focus = focus_indices(al.attn[("first", "tv")][i], wf.cache.focus_k) if h else torch.zeros(0)
                    w.add_sample(SampleTargets(
                        sample_id=r["sample_id"], token_hash=override.get(r["sample_id"], r["token_hash"]),
                        image_hash=h or None, n_text=ix.n_text_after if h else 0,
                        attn={key: al.attn[key][i].numpy() for key in keys} if attention == "stored" else {},
                        focus=focus.long().numpy(), topk_ids=sd.ids.numpy(),
                        topk_logprobs=sd.logprobs.numpy(), tail_logmass=sd.tail_logmass.numpy()))
                    if h and h not in stored:
                        w.add_image(h, al.vision_tokens[i].numpy() if projector_tokens == "stored" else None)
                        stored.add(h)
    store.finalize([r["sample_id"] for r in rows])
    return path


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> TinyWorld:
    """World + manifest (pretrain 6, finetune 10 + 2 extra incl. a text-only one) + teacher/student."""
    root = tmp_path_factory.mktemp("st_world")
    return TinyWorld(root, _build(root))


@pytest.fixture(scope="session")
def tiny_store(tiny_world) -> Path:
    """The default (lossy) store of subset "short" at `tiny_world.base.cache_path("short")`."""
    return tiny_world.write_store(tiny_world.base, SUBSET)
