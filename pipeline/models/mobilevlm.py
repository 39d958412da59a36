"""MobileVLM V2: LLaMA (transformers' LlamaModel) + frozen CLIP tower + LDPv2 projector.

The module tree follows the released checkpoints (`model.*` = LlamaModel carrying `mm_projector`,
plus `lm_head`) except for the CLIP tower, which sits at the top (`vision_tower.vision_tower.*`)
rather than inside `model`: transformers installs its output-capturing hooks recursively through
LlamaModel's children, and a CLIPVisionModel in there would get a second set of hooks (its
hidden_states then come out doubled and hidden_states[-2] picks the wrong layer). checkpoint.py
maps the tower's keys to and from the released `model.vision_tower.vision_tower.vision_model.*`.
"""

from __future__ import annotations

import copy
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaModel
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from pipeline.constants import IGNORE_INDEX
from pipeline.models import capture, original_compat
from pipeline.models.capture import AlignOutput, CaptureSpec, Recorder
from pipeline.models.checkpoint import (
    CheckpointError,
    as_dtype,
    check_keys,
    from_released,
    read_state_dict,
    to_released,
    write_state_dict,
)
from pipeline.models.config import (
    CLIP_L14_336,
    MobileVLMConfig,
    load_config,
    projector_grid,
    resolve_vision_config,
    validate_config,
)
from pipeline.models.embed import Embedded, embed_inputs
from pipeline.models.projector import CLIPVisionTower, LDPv2Projector

_ATTN = {"sdpa": capture.ATTN_SDPA, "eager": capture.ATTN_EAGER}
# generic PreTrainedConfig keys the released config.json files do not carry
_CONFIG_NOISE = ("_name_or_path", "transformers_version", "id2label", "label2id", "chunk_size_feed_forward",
                 "is_encoder_decoder", "output_attentions", "output_hidden_states", "problem_type", "return_dict")
_CACHE_KW = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


@dataclass
class MobileVLMOutput:
    """logits [B, L_emb, vocab]; loss (shifted CE, -100 ignored) when labels were given;
    attention_mask / labels [B, L_emb] in embedded coordinates; hidden_states when asked."""

    logits: torch.Tensor
    loss: torch.Tensor | None
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    hidden_states: tuple[torch.Tensor, ...] | None = None


class MobileVLM(nn.Module):
    def __init__(self, config: MobileVLMConfig, attn_implementation: str = "sdpa"):
        """Random init from a config alone. attn_implementation "sdpa" (default) or "eager"
        (reference runs); both capture attention only inside `forward_align`."""
        super().__init__()
        if attn_implementation not in _ATTN:
            raise ValueError(f"attn_implementation={attn_implementation!r}: use 'sdpa' or 'eager'")
        config = copy.deepcopy(config)  # we set its attention implementation: never alias the caller's
        validate_config(config)
        vision_config = resolve_vision_config(config)
        config._attn_implementation = _ATTN[attn_implementation]
        self.config = config
        self.model = LlamaModel(config)
        self.vision_tower = CLIPVisionTower(vision_config, config.mm_vision_select_layer)
        self.model.mm_projector = LDPv2Projector(config.mm_hidden_size, config.hidden_size, projector_grid(config))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        nn.init.normal_(self.lm_head.weight, std=config.initializer_range)

    # ---- properties -------------------------------------------------------------------------
    @property
    def num_vision_tokens(self) -> int:
        return self.model.mm_projector.grid**2

    @property
    def image_size(self) -> int:
        return self.vision_tower.image_size

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def gradient_checkpointing_enable(self) -> None:
        """Activation checkpointing of the LLM layers (non-reentrant; attention capture stays valid)."""
        kw = {"use_reentrant": False}
        if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)

    # ---- forward ----------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, S, S] -> projector tokens [N, |V|, D] (tower frozen, projector trainable)."""
        feats = self.vision_tower(images)  # [N, P, mm_hidden], no grad
        proj = self.model.mm_projector
        return proj(feats.to(proj.mlp.mlp[0].weight.dtype))

    def embed_inputs(self, input_ids: torch.Tensor, images: torch.Tensor | None = None,
                     attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> Embedded:
        """Splice the vision tokens in at the -200 positions (see embed.py)."""
        return embed_inputs(self, input_ids, images, attention_mask, labels)

    def _run_llm(self, e: Embedded, output_hidden_states: bool) -> tuple[torch.Tensor, tuple | None]:
        out = self.model(inputs_embeds=e.embeds, attention_mask=e.attention_mask, use_cache=False,
                         output_hidden_states=output_hidden_states)
        return self.lm_head(out.last_hidden_state), out.hidden_states  # [B, L_emb, vocab]

    def forward(self, input_ids: torch.Tensor, images: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_hidden_states: bool = False) -> MobileVLMOutput:
        """input_ids [B, L] right-padded, at most one -200 per row; images [B, 3, S, S] or None."""
        e = self.embed_inputs(input_ids, images, attention_mask, labels)
        logits, hs = self._run_llm(e, output_hidden_states)
        return MobileVLMOutput(logits, _shifted_ce(logits, e.labels), e.attention_mask, e.labels, hs)

    def forward_align(self, input_ids: torch.Tensor, images: torch.Tensor | None = None,
                      attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                      spec: CaptureSpec = CaptureSpec(), output_hidden_states: bool = False) -> AlignOutput:
        """Forward that also returns the projector tokens and the attention blocks `spec` asks for."""
        e = self.embed_inputs(input_ids, images, attention_mask, labels)
        layer_of = {"first": 0, "last": self.config.num_hidden_layers - 1}
        names: dict[int, list[str]] = {}
        for name in spec.layers if spec.blocks else ():
            names.setdefault(layer_of[name], []).append(name)
        recs = {i: Recorder(tuple(n), spec.blocks, e.index) for i, n in names.items()}
        if recs and self.config._attn_implementation not in _ATTN.values():
            raise RuntimeError(
                f"forward_align needs attention implementation {capture.ATTN_SDPA} or {capture.ATTN_EAGER}, "
                f"the config has {self.config._attn_implementation!r}: build the model with attn_implementation"
            )
        try:
            for i, rec in recs.items():
                self.model.layers[i].self_attn._alignkd_capture = rec
            logits, hs = self._run_llm(e, output_hidden_states)
        finally:
            for i in recs:
                self.model.layers[i].self_attn._alignkd_capture = None
        attn: dict = {}
        for rec in recs.values():
            attn.update(rec.result())
        attn = {(l, b): attn[(l, b)] for l in spec.layers for b in spec.blocks} if recs else {}
        return AlignOutput(logits=logits, vision_tokens=e.vision_tokens, attention_mask=e.attention_mask,
                           labels=e.labels, index=e.index, attn=attn,
                           hidden_states=hs if output_hidden_states else None, loss=_shifted_ce(logits, e.labels))

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, images: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, max_new_tokens: int = 16,
                 eos_token_id: int | None = None, pad_token_id: int | None = None) -> torch.Tensor:
        """Greedy decoding with a KV cache -> new token ids [B, n <= max_new_tokens] (eos included;
        pad id after a row's eos). Prompts stay right-padded: each row's new tokens get positions
        length_b, length_b + 1, ... and the padding slots stay masked out (holes in the 2D mask)."""
        eos = self.config.eos_token_id if eos_token_id is None else eos_token_id
        pad = (self.config.pad_token_id or 0) if pad_token_id is None else pad_token_id
        e = self.embed_inputs(input_ids, images, attention_mask)
        am = e.attention_mask
        lengths = am.sum(1)  # [B]
        b, length = am.shape
        pos = torch.arange(length, device=am.device).expand(b, -1)
        out = self.model(inputs_embeds=e.embeds, attention_mask=am, position_ids=pos, use_cache=True)
        h = out.last_hidden_state[torch.arange(b, device=am.device), lengths - 1]  # [B, D]
        nxt = self.lm_head(h).argmax(-1)
        done = torch.zeros(b, dtype=torch.bool, device=am.device)
        new = []
        for step in range(max_new_tokens):
            new.append(torch.where(done, torch.full_like(nxt, pad), nxt))  # finished rows: pad
            done |= nxt == eos  # (finished rows keep decoding their argmax: any valid id will do)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            cache = getattr(out, "cache", None) or out.past_key_values
            am = torch.cat([am, torch.ones(b, 1, dtype=am.dtype, device=am.device)], dim=1)
            out = self.model(input_ids=nxt[:, None], attention_mask=am, position_ids=(lengths + step)[:, None],
                             use_cache=True, **{_CACHE_KW: cache})
            nxt = self.lm_head(out.last_hidden_state[:, -1]).argmax(-1)
        return torch.stack(new, dim=1) if new else torch.zeros(b, 0, dtype=torch.long, device=am.device)

    # ---- checkpoint I/O ---------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: "torch.dtype | str" = torch.float32,
                        device: "torch.device | str" = "cpu", attn_implementation: str = "sdpa") -> "MobileVLM":
        """Load a checkpoint dir in the original layout; strict: missing/unexpected keys are an error."""
        path = Path(path)
        dtype = as_dtype(dtype)
        config = load_config(path)
        with torch.device("meta"):  # no random init, no double memory: weights are assigned below
            model = cls(config, attn_implementation)
        sd = from_released(read_state_dict(path, device))
        check_keys(set(model.state_dict()), set(sd), str(path))
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
        try:
            model.load_state_dict(sd, strict=True, assign=True)
        except RuntimeError as err:  # shape mismatches
            raise CheckpointError(f"checkpoint {path} does not fit its config.json: {err}") from None
        model._rebuild_buffers(torch.device(device))
        model.vision_tower.requires_grad_(False)
        return model.eval()

    def _rebuild_buffers(self, device: torch.device) -> None:
        """Recreate the non-persistent buffers (not in checkpoints) that a meta build left empty."""
        with torch.device(device):
            self.model.rotary_emb = LlamaRotaryEmbedding(self.config)  # inv_freq stays fp32
            emb = self.vision_tower.vision_tower.embeddings
            emb.position_ids = torch.arange(emb.num_positions).expand((1, -1))
        left = [n for n, t in list(self.named_parameters()) + list(self.named_buffers()) if t.is_meta]
        assert not left, f"tensors left on the meta device: {left}"

    def _apply(self, fn, recurse=True):
        """After .to()/.half()/.bfloat16() (DeepSpeed casts the module too): RoPE's inv_freq stays fp32,
        like transformers' from_pretrained leaves it; a half-precision inv_freq skews long positions."""
        super()._apply(fn, recurse)
        inv = self.model.rotary_emb.inv_freq
        if inv.dtype != torch.float32 and not inv.is_meta:
            with torch.device(inv.device):
                self.model.rotary_emb = LlamaRotaryEmbedding(self.config)
        return self

    def save_pretrained(self, path: str | Path, dtype: "torch.dtype | str | None" = None,
                        safe_serialization: bool = True, max_shard_size: "int | str | None" = None,
                        absolute_tower: bool = True) -> Path:
        """Write config.json + weights under the released key names (.safetensors, or .bin with
        safe_serialization=False; sharded above max_shard_size, e.g. "5GB").

        Loadable by the original MobileVLM code too (original_compat.py says what that takes): a
        local vision tower becomes a complete CLIPVisionModel dir `path/vision_tower/` (weights,
        config, preprocessor_config.json) named by its absolute path, and config.json carries the
        transformers-4.33 key names beside the new ones. absolute_tower=False keeps the relative
        name "vision_tower" (location-independent bytes, e.g. the toy world's hashed inits; alignkd
        resolves it against the checkpoint, the original code only from inside the dir).
        A projector grid the original cannot run gets a loud OriginalIncompatibleWarning."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        dtype = as_dtype(dtype) or self.dtype
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in to_released(self.state_dict()).items()}
        write_state_dict(path, sd, safe_serialization, max_shard_size)
        d = self.config.to_dict()
        for k in _CONFIG_NOISE:
            d.pop(k, None)
        d.update(model_type="mobilevlm", architectures=["MobileLlamaForCausalLM"], dtype=str(dtype).split(".")[-1])
        d = original_compat.legacy_config_keys(d)
        local_tower = self.config.mm_vision_tower != CLIP_L14_336
        if local_tower:
            original_compat.write_vision_tower_dir(path / original_compat.VISION_DIR, resolve_vision_config(self.config),
                                                   self.vision_tower.vision_tower.state_dict(), dtype)
            d["mm_vision_tower"] = original_compat.VISION_DIR
        (path / "config.json").write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
        if local_tower and absolute_tower:
            original_compat.point_vision_tower(path)
        original_compat.warn_if_not_original(self.config, str(path))
        return path


def _shifted_ce(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    """Mean CE of logits[:, t] against labels[:, t + 1] over labels != -100 (fp32)."""
    if labels is None:
        return None
    lg, lb = logits[:, :-1].float(), labels[:, 1:]
    if not bool((lb != IGNORE_INDEX).any()):
        return lg.sum() * 0.0  # nothing supervised: a zero that still has a graph
    return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), lb.reshape(-1), ignore_index=IGNORE_INDEX)
