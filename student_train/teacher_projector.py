"""The teacher's projector tokens rebuilt from the student's own frozen tower, for a store dumped
with `cache.projector_tokens: recompute` (cache_schema keeps the teacher projector once instead
of ~1.08 MB of tokens per image at the 7B's width).

MobileVLM teachers and students share one frozen CLIP tower, so the teacher's tokens of an image
are its projector applied to the patch features the student's tower computes anyway:

    feats  = student tower(images)                 [n_img, P, mm_hidden]  (captured, no extra pass)
    tokens = teacher projector(feats) under no_grad [n_img, |V|, D_t] float32

This holds only for a student whose tower fingerprint (pipeline.fingerprint.tower_fingerprint:
weights, feature layer, image size) equals the one the store names; `vision_source` refuses any
other before training starts.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.fingerprint import tower_fingerprint
from pipeline.models.projector import LDPv2Projector


class TowerMismatchError(ValueError):
    """The store holds no projector tokens and the student's tower cannot rebuild them."""


def vision_source(prov, student_dir: str | Path, needs_vision_tokens: bool, needs_attention: bool = False) -> str | None:
    """Where the loss's teacher projector tokens come from: None (the loss reads none), "stored"
    (the store holds them) or "recompute" (the student's tower equals the teacher's). A store
    whose attention is recomputed needs the tokens too (its layer-0 input holds them)."""
    if not needs_vision_tokens and not (needs_attention and prov.attention == "recompute"):
        return None
    if prov.projector_tokens == "stored":
        return "stored"
    got = tower_fingerprint(student_dir)
    if got != prov.vision_tower_fingerprint:
        raise TowerMismatchError(
            f"the cache holds no teacher projector tokens (projector_tokens: recompute) and the student's vision "
            f"tower {got} ({student_dir}) is not the teacher's {prov.vision_tower_fingerprint}: re-dump with "
            "cache.projector_tokens: stored, or train a student with the teacher's tower")
    return "recompute"


def build_teacher_recompute(reader, resolved, source: str | None, device) -> tuple:
    """(TeacherTokens | None, TeacherFirstLayer | None) the trained module needs for `reader`'s store."""
    if source != "recompute":
        return None, None
    prov = reader.provenance
    tokens = TeacherTokens(reader.teacher_projector(), prov.num_vision_tokens, device)
    tokens.needed = resolved.uses_vision_tokens
    attention = None
    needs = resolved.teacher_targets()
    if prov.attention == "recompute" and needs.attn:
        tensors, config = reader.teacher_first_layer()
        attention = TeacherFirstLayer(tensors, config, tokens, tuple(dict.fromkeys(b for _, b in needs.attn)), device)
    return tokens, attention


class TeacherTokens:
    """Frozen teacher projector on the student's device. Deliberately not an nn.Module attribute of
    the trained module: DeepSpeed must neither optimise, cast nor checkpoint it (it stays fp32,
    the dump's compute dtype for the projector)."""

    def __init__(self, tensors: dict[str, np.ndarray], num_vision_tokens: int, device: torch.device | str):
        w0 = tensors["mlp.mlp.0.weight"]  # [D_t, mm_hidden]
        grid = math.isqrt(num_vision_tokens)
        self.proj = LDPv2Projector(int(w0.shape[1]), int(w0.shape[0]), grid)
        self.proj.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=True)
        self.proj.requires_grad_(False).eval().to(device=device, dtype=torch.float32)
        self._feats: list[torch.Tensor] = []
        self._vt: torch.Tensor | None = None
        self.needed = True  # the loss reads the tokens (False: only the recomputed attention uses them)

    def capture(self, tower: nn.Module) -> None:
        """Keep the tower's output [n_img, P, mm_hidden] of each forward (the image rows, in batch order)."""
        tower.register_forward_hook(lambda _m, _inp, out: self._feats.append(out.detach()))

    def reset(self) -> None:
        self._feats.clear()
        self._vt = None

    @torch.no_grad()
    def image_tokens(self) -> torch.Tensor:
        """[n_img, |V|, D_t] float32 of the image rows of the forward just run (computed once)."""
        if getattr(self, "_vt", None) is None:
            if len(self._feats) != 1:
                raise RuntimeError(f"expected one vision-tower call in the student's forward, saw {len(self._feats)}")
            self._vt = self.proj(self._feats[0].float())
        return self._vt

    @torch.no_grad()
    def tokens(self, input_has_image: torch.Tensor) -> torch.Tensor | None:
        """[B, |V|, D_t] float32 of the forward just run (zero rows for text-only samples, as the
        stored path's collate gives), None when no sample had an image. input_has_image: [B] bool."""
        if not bool(input_has_image.any()):
            return None
        vt = self.image_tokens()  # [n_img, |V|, D_t]
        rows = input_has_image.nonzero().flatten()
        if vt.shape[0] != rows.numel():
            raise RuntimeError(f"the tower encoded {vt.shape[0]} images for {rows.numel()} image rows")
        return vt.new_zeros(input_has_image.shape[0], *vt.shape[1:]).index_copy(0, rows, vt)


class TeacherFirstLayer:
    """The teacher's first-layer attention blocks recomputed (cache `attention: recompute`): its
    layer-0 input is the teacher's embedding rows with its projector tokens spliced in (the
    dump's `embed_inputs`), so the probabilities need only the embedding, layer 0's input norm and
    its q/k projections, kept once in the store, and the rebuilt tokens (`TeacherTokens`):

        x = RMSNorm(embeds) [B, L, D_t];  q, k = RoPE(q_proj x, k_proj x) [B, H, L, hd]
        P = softmax(q kᵀ / √hd + causal mask)  → the blocks, per sample, by the dump's Recorder

    fp32 throughout: the lossless reference. Not an nn.Module attribute of the trained module (see
    TeacherTokens)."""

    def __init__(self, tensors: dict[str, np.ndarray], config: dict, tokens: TeacherTokens,
                 blocks: tuple[str, ...], device: torch.device | str):
        from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding

        from pipeline.models.config import MobileVLMConfig

        cfg = MobileVLMConfig.from_dict({k: v for k, v in config.items() if k != "transformers_version"})
        self.cfg, self.tokens, self.blocks = cfg, tokens, tuple(blocks)
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        t = {k: torch.from_numpy(v).to(device=device, dtype=torch.float32) for k, v in tensors.items()}
        self.embed = nn.Embedding.from_pretrained(t["embed_tokens.weight"], freeze=True)
        self.norm = LlamaRMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps).to(device)
        self.norm.weight.data.copy_(t["input_layernorm.weight"])
        self.norm.requires_grad_(False)
        self.q_w, self.q_b = t["q_proj.weight"], t.get("q_proj.bias")  # [H·hd, D_t]
        self.k_w, self.k_b = t["k_proj.weight"], t.get("k_proj.bias")  # [Hkv·hd, D_t]
        with torch.device(device):
            self.rotary = LlamaRotaryEmbedding(cfg)
        self.model = self  # embed_inputs reads model.model.embed_tokens
        self.embed_tokens = self.embed
        self.num_vision_tokens = tokens.proj.grid ** 2
        self.device = torch.device(device)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """embed_inputs' hook: the teacher's tokens of the image rows, rebuilt from the student's
        tower features of this forward (the pixels themselves are not read again)."""
        vt = self.tokens.image_tokens()
        assert vt.shape[0] == images.shape[0], (vt.shape, images.shape)
        return vt

    @torch.no_grad()
    def attention(self, input_ids: torch.Tensor, images: torch.Tensor | None,
                  attention_mask: torch.Tensor) -> dict[tuple[str, str], list[torch.Tensor]]:
        """{("first", block): per-sample [H_t, r, c] float32} for the batch of the forward just run."""
        import torch.nn.functional as F
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        from pipeline.models.capture import Recorder
        from pipeline.models.embed import embed_inputs

        e = embed_inputs(self, input_ids, images, attention_mask, None)
        x = self.norm(e.embeds.float())  # [B, L, D_t]
        b, n = x.shape[:2]
        q = F.linear(x, self.q_w, self.q_b).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = F.linear(x, self.k_w, self.k_b).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.rotary(x, torch.arange(n, device=x.device)[None])
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        rec = Recorder(("first",), self.blocks, e.index)
        # causal alone: rows are right-padded, so a valid query row never sees a padded key
        rec.record(q, k, None, self.head_dim ** -0.5)
        return rec.result()
