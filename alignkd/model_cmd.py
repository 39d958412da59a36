"""`alignkd model ...`: look at a MobileVLM checkpoint.

    alignkd model info PATH                   architecture summary and parameter counts (no weights read)
    alignkd model info preset:mobilevlm_v2_7b the same for a built-in config (real shapes, built on meta)
    alignkd model smoke PATH                  load, one forward on a random image + prompt, greedy generate
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, help="Inspect MobileVLM V2 checkpoints.")

_PRESETS = ("mobilevlm_v2_1_7b", "mobilevlm_v2_7b")


def _config(path: str):
    from pipeline.models import load_config
    from toy_world import presets

    if path.startswith("preset:"):
        name = path.split(":", 1)[1]
        if name not in _PRESETS:
            raise typer.BadParameter(f"unknown preset {name!r}; choose from {', '.join(_PRESETS)}")
        return getattr(presets, f"{name}_config")()
    return load_config(path)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@app.command("info")
def info(path: str = typer.Argument(..., help="checkpoint dir, or preset:mobilevlm_v2_1_7b / preset:mobilevlm_v2_7b")) -> None:
    """Architecture summary and parameter counts (the model is built on the meta device)."""
    import torch

    from pipeline.models import MobileVLM, resolve_vision_config

    cfg = _config(path)
    with torch.device("meta"):
        m = MobileVLM(cfg)
    vc = resolve_vision_config(cfg)
    llm = _count(m.model) - _count(m.model.mm_projector) + _count(m.lm_head)
    rows = [
        ("checkpoint", path),
        ("LLM", f"LLaMA {cfg.num_hidden_layers} layers x {cfg.hidden_size} hidden, {cfg.num_attention_heads} heads, "
                f"ffn {cfg.intermediate_size}, rms eps {cfg.rms_norm_eps}, vocab {cfg.vocab_size}"),
        ("vision tower", f"{cfg.mm_vision_tower}: CLIP {vc.num_hidden_layers} x {vc.hidden_size}, {vc.image_size} px, "
                         f"patch {vc.patch_size} -> {m.vision_tower.num_patches} patches, layer {cfg.mm_vision_select_layer}"),
        ("projector", f"{cfg.mm_projector_type}: {cfg.mm_hidden_size} -> {cfg.hidden_size}, pool "
                      f"{m.vision_tower.grid}x{m.vision_tower.grid} -> {m.model.mm_projector.grid}x{m.model.mm_projector.grid}, "
                      f"{m.num_vision_tokens} vision tokens"),
        ("params LLM", f"{llm:,}"),
        ("params vision tower", f"{_count(m.vision_tower):,} (frozen)"),
        ("params projector", f"{_count(m.model.mm_projector):,}"),
        ("params total", f"{_count(m):,}"),
    ]
    from pipeline.models.original_compat import checkpoint_problems

    problems = checkpoint_problems(cfg, None if path.startswith("preset:") else Path(path))
    rows.append(("original MobileVLM", "NOT runnable by the original code (see the warning)" if problems else
                 "loadable by the original code (transformers 4.33)"))
    for k, v in rows:
        typer.echo(f"{k:>20}  {v}")
    for p in problems:  # on stderr, so that it is seen even when stdout is piped away
        typer.echo(f"WARNING: the original MobileVLM code cannot run {path}: {p}", err=True)


@app.command("smoke")
def smoke(path: Path = typer.Argument(..., help="checkpoint dir"),
          max_new_tokens: int = typer.Option(4, help="greedy tokens to generate"),
          seed: int = typer.Option(0, help="seed of the random image and prompt")) -> None:
    """Load, run one forward on a random image + prompt, generate a few tokens; print shapes."""
    import numpy as np
    import torch
    from PIL import Image

    from pipeline.constants import IMAGE_TOKEN_INDEX
    from pipeline.models import CaptureSpec, MobileVLM, preprocess_image

    rng = np.random.default_rng(seed)
    model = MobileVLM.from_pretrained(path)
    s = model.image_size
    img = Image.fromarray(rng.integers(0, 256, (s, s * 3 // 4, 3), dtype=np.uint8))  # not square: exercises pad
    px = preprocess_image(img, model.config)[None]  # [1, 3, S, S]
    text = rng.integers(3, model.config.vocab_size, 8).tolist()
    ids = torch.tensor([[model.config.bos_token_id, IMAGE_TOKEN_INDEX, *text]])
    with torch.no_grad():
        al = model.forward_align(input_ids=ids, images=px, attention_mask=torch.ones_like(ids),
                                 spec=CaptureSpec(layers=("first",), blocks=("tv",)))
        gen = model.generate(input_ids=ids, images=px, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens)
    typer.echo(f"pixel_values   {tuple(px.shape)}")
    typer.echo(f"input_ids      {tuple(ids.shape)} -> embedded length {al.index[0].length} (|V|={al.index[0].n_vision}, |T|={al.index[0].n_text_after})")
    typer.echo(f"logits         {tuple(al.logits.shape)} {str(al.logits.dtype).split('.')[-1]}")
    typer.echo(f"vision_tokens  {tuple(al.vision_tokens.shape)}")
    typer.echo(f"attn first/tv  {tuple(al.attn[('first', 'tv')][0].shape)}")
    typer.echo(f"generated      {gen[0].tolist()}")
