"""Shape settings, synthetic batches and a real teacher cache for the training-cost benchmark.

A `Setting` fixes the student and teacher architectures and the batch geometry. Batches are
`StudentBatch`es (the loader's type) of random tokens and images with the real layout:

    un-embedded ids:  <s> prefix(P) <image>(-200) text(|T|)        labels: the last |R| text tokens
    embedded:         L_emb = 1 + P + |V| + |T|;  R = the |R| logit positions before them

The cached mode's targets come from a real zarr store: the teacher's `forward_align` over the
same batches, reduced by `teacher_dump.reduce.reduce_batch` (the dump's own reduction) and written
with `cache_schema`'s writer, then read back with `CacheReader` and collated by
`student_train.teacher_targets` exactly as the training loader does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from cache_schema import CacheReader, CacheStore, Encoding, Provenance
from pipeline.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from pipeline.models import CaptureSpec, MobileVLM, MobileVLMConfig
from pipeline.positions import sample_index
from student_train.data import stored_needs
from student_train.data.batch import StudentBatch, pad_text, stack_images
from student_train.losses import TeacherTargets
from student_train.teacher_targets import collate_teacher, from_cached
from teacher_dump.actor import reduce_spec
from teacher_dump.reduce import BatchMeta, reduce_batch

_DROP = ("head_dim", "transformers_version", "_name_or_path", "dtype")


@dataclass(frozen=True)
class Arch:
    layers: int
    hidden: int
    heads: int
    ffn: int

    def text(self) -> str:
        return f"{self.layers}×{self.hidden}, {self.heads} heads"


@dataclass(frozen=True)
class Setting:
    """One row group of the training-cost table."""

    name: str
    student: Arch
    teacher: Arch
    vocab: int
    grid: int  # √|V|: the projector pools the patch grid to grid × grid vision tokens
    batch: int
    prefix: int  # text tokens before the image (system prompt, "USER:")
    n_text: int  # |T|, text after the image (question + answer)
    n_resp: int  # |R|, supervised answer tokens at the end
    n_batches: int = 2
    note: str = ""
    real_vision: bool = False  # the released CLIP-L/14-336 tower instead of the toy one
    extra: dict = field(default_factory=dict)

    @property
    def n_vision(self) -> int:
        return self.grid * self.grid

    @property
    def l_emb(self) -> int:
        return 1 + self.prefix + self.n_vision + self.n_text

    def shapes(self) -> dict:
        return {"student": self.student.__dict__, "teacher": self.teacher.__dict__, "vocab": self.vocab,
                "n_vision": self.n_vision, "batch": self.batch, "prefix": self.prefix, "n_text": self.n_text,
                "n_resp": self.n_resp, "l_emb_mean": self.l_emb, "real_vision_tower": self.real_vision}


def llm_config(base: MobileVLMConfig, arch: Arch, vocab: int, grid: int) -> MobileVLMConfig:
    """`base` (a preset: its vision tower, norms, rope) with the LLM shape of `arch`."""
    d = {k: v for k, v in base.to_dict().items() if k not in _DROP}
    d.update(num_hidden_layers=arch.layers, hidden_size=arch.hidden, num_attention_heads=arch.heads,
             num_key_value_heads=arch.heads, intermediate_size=arch.ffn, vocab_size=vocab, mm_projector_grid=grid)
    return MobileVLMConfig.from_dict(d)


def configs(s: Setting, vision_dir: Path) -> tuple[MobileVLMConfig, MobileVLMConfig]:
    """(student, teacher) configs; both built from the project's presets."""
    from toy_world.presets import (
        mobilevlm_v2_1_7b_config,
        mobilevlm_v2_7b_config,
        toy_student_config,
        toy_teacher_config,
    )

    if s.real_vision:  # released CLIP-L/14-336 architecture (random weights: only shapes matter here)
        return (llm_config(mobilevlm_v2_1_7b_config(), s.student, s.vocab, s.grid),
                llm_config(mobilevlm_v2_7b_config(), s.teacher, s.vocab, s.grid))
    return (llm_config(toy_student_config(s.vocab, vision_dir, s.grid), s.student, s.vocab, s.grid),
            llm_config(toy_teacher_config(s.vocab, vision_dir, s.grid), s.teacher, s.vocab, s.grid))


def make_batches(s: Setting, image_size: int, seed: int = 0) -> list[StudentBatch]:
    """`s.n_batches` batches of `s.batch` samples; lengths jitter ±10% so rows are right-padded."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(s.n_batches):
        ids, labels, images = [], [], []
        for _ in range(s.batch):
            p = max(1, int(round(s.prefix * rng.uniform(0.9, 1.1))))
            t = max(2, int(round(s.n_text * rng.uniform(0.9, 1.1))))
            r = max(1, min(t - 1, int(round(s.n_resp * rng.uniform(0.9, 1.1)))))
            text = rng.integers(3, s.vocab, size=p + t)
            x = np.concatenate([[1], text[:p], [IMAGE_TOKEN_INDEX], text[p:]]).astype(np.int64)
            y = np.full_like(x, IGNORE_INDEX)
            y[-r:] = x[-r:]  # the answer: the last r tokens are supervised
            ids.append(x)
            labels.append(y)
            images.append(torch.from_numpy(rng.standard_normal((3, image_size, image_size)).astype(np.float32)))
        input_ids, lab, mask = pad_text(ids, labels)
        out.append(StudentBatch(sample_ids=[f"bench/{b}/{i}" for i in range(s.batch)], input_ids=input_ids,
                                labels=lab, attention_mask=mask, images=stack_images(images)))
    return out


def bench_provenance(teacher: MobileVLM, topk: int, focus_k: int, encoding: Encoding | None = None) -> Provenance:
    cfg = teacher.config
    return Provenance(
        teacher_fingerprint="benchmark", teacher_config_fingerprint="benchmark", tokenizer_fingerprint="benchmark",
        manifest_fingerprint="benchmark", templates=("v1",), subset="bench", max_length=4096,
        num_vision_tokens=teacher.num_vision_tokens, teacher_heads=cfg.num_attention_heads,
        teacher_hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size, logits_topk=topk, focus_k=focus_k,
        attn_blocks=("first.tv",), encoding=encoding or Encoding(),
    )


@torch.inference_mode()
def first_layer_of(teacher: MobileVLM) -> tuple[dict, dict]:
    """What an attention-recompute store keeps of a loaded teacher (teacher_dump.run.teacher_first_layer
    reads the same from a checkpoint dir): embedding rows, layer-0 input norm, q/k projections; config."""
    layer = teacher.model.layers[0]
    f = lambda t: t.detach().float().cpu().numpy()
    tensors = {"embed_tokens.weight": f(teacher.model.embed_tokens.weight),
               "input_layernorm.weight": f(layer.input_layernorm.weight),
               **{f"{n}.{p}": f(t) for n in ("q_proj", "k_proj") for p, t in getattr(layer.self_attn, n).named_parameters()}}
    return tensors, teacher.config.to_dict()


def write_store(teacher: MobileVLM, batches: list[StudentBatch], path: Path, topk: int = 64,
                focus_k: int = 16, projector_tokens: str = "recompute", attention: str = "recompute") -> CacheReader:
    """Dump `teacher` over `batches` into a finalised store at `path` (one unit per batch), as the
    dump's default does: the teacher projector and first layer kept once, its projector tokens and
    first-layer attention recomputed by the student ("stored" writes them per image / sample)."""
    prov = replace(bench_provenance(teacher, topk, focus_k), projector_tokens=projector_tokens,
                   vision_tower_fingerprint="benchmark", attention=attention)
    projector = {k: v.float().cpu().numpy() for k, v in teacher.model.mm_projector.state_dict().items()}
    first = first_layer_of(teacher) if attention == "recompute" else None
    store = CacheStore.create_or_open(path, prov, projector=projector, first_layer=first)
    spec, nv, dev = CaptureSpec(("first",), ("tv",)), teacher.num_vision_tokens, teacher.device
    for j, b in enumerate(batches):
        al = teacher.forward_align(input_ids=b.input_ids.to(dev), images=b.images.to(dev, teacher.dtype),
                                   attention_mask=b.attention_mask.to(dev), labels=None, spec=spec)
        n = b.attention_mask.sum(1).tolist()
        index = [sample_index(b.input_ids[i, :n[i]].numpy(), b.labels[i, :n[i]].numpy(), nv) for i in range(len(b))]
        meta = BatchMeta(sample_ids=b.sample_ids, token_hashes=["benchmark"] * len(b),
                         image_hashes=[f"img-{sid}" for sid in b.sample_ids], emit_image=[True] * len(b))
        samples, images = reduce_batch(al, index, meta, reduce_spec(prov))
        with store.unit_writer(f"u{j:04d}") as w:
            for h, tok in images:
                w.add_image(h, tok)
            for smp in samples:
                w.add_sample(smp)
    store.finalize([sid for b in batches for sid in b.sample_ids])
    return CacheReader(path)


def attach_cached(batches: list[StudentBatch], reader: CacheReader, needs: TeacherTargets) -> list[StudentBatch]:
    """Copies of `batches` whose `.teacher` is read from the store (what the cached loader yields:
    no projector tokens from a recompute store, the trained module rebuilds them)."""
    needs = stored_needs(needs, reader.provenance)
    out = []
    for b in batches:
        per = []
        for sid in b.sample_ids:
            rec = reader.get(sid)
            per.append(from_cached(rec, reader.image_tokens(rec.image_hash) if needs.vision_tokens else None, needs))
        out.append(StudentBatch(b.sample_ids, b.input_ids, b.labels, b.attention_mask, b.images,
                                teacher=collate_teacher(per, needs)))
    return out
