"""MobileVLM forward, generate, vision path, image preprocessing and presets (tiny, fp32)."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPVisionModel

from pipeline.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from pipeline.models import MobileVLM, preprocess_image, resolve_vision_config
from pipeline.models.image import CLIP_MEAN, CLIP_STD
from toy_world import presets

I, X = IMAGE_TOKEN_INDEX, IGNORE_INDEX


def _pad(rows, value=0):
    n = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (n - len(r)) for r in rows])


def test_vision_path_matches_independent_computation(tiny_vlm):
    """Tower = CLIP hidden_states[-2] without CLS (checked against a CLIP truncated to its first
    N-1 layers); projector = Linear, GELU, Linear -> AdaptiveAvgPool 16x16 -> 8x8 -> PEG + residual."""
    px = torch.randn(2, 3, 64, 64)
    vc = copy.deepcopy(resolve_vision_config(tiny_vlm.config))
    vc.num_hidden_layers -= 1
    short = CLIPVisionModel(vc).eval()
    short.load_state_dict(tiny_vlm.vision_tower.vision_tower.state_dict(), strict=False)
    with torch.no_grad():
        feats = tiny_vlm.vision_tower(px)
        want = short(pixel_values=px).last_hidden_state[:, 1:]
        assert feats.shape == (2, 256, 64) and torch.allclose(feats, want, atol=1e-5)
        pr = tiny_vlm.model.mm_projector
        x = pr.mlp.mlp[2](F.gelu(pr.mlp.mlp[0](feats)))  # [2, 256, 128]
        grid = x.transpose(1, 2).reshape(2, 128, 16, 16)
        pooled = grid.reshape(2, 128, 8, 2, 8, 2).mean((3, 5))  # 2x2 average pooling
        conv = pr.peg.peg[0]
        out = F.conv2d(pooled, conv.weight, conv.bias, padding=1, groups=128) + pooled
        assert torch.allclose(tiny_vlm.encode_images(px), out.flatten(2).transpose(1, 2), atol=1e-5)
    assert tiny_vlm.num_vision_tokens == 64


def test_forward_splices_vision_tokens_and_shifted_loss(tiny_vlm):
    ids = _pad([[1, 5, I, 7, 8, 9], [1, 3, 4], [1, I, 6, 2]])
    am = _pad([[1] * 6, [1] * 3, [1] * 4])
    lab = _pad([[X, X, X, 7, 8, 9], [X, 3, 4], [X, X, 6, 2]], X)
    px = torch.randn(3, 3, 64, 64)
    out = tiny_vlm(input_ids=ids, images=px, attention_mask=am, labels=lab)
    assert out.logits.shape == (3, 5 + 64, 100)
    assert out.attention_mask.sum(1).tolist() == [69, 3, 67]
    e = tiny_vlm.embed_inputs(ids, px, am, lab)
    vt = tiny_vlm.encode_images(px)
    assert torch.allclose(e.embeds[0, 2:66], vt[0]) and torch.allclose(e.embeds[2, 1:65], vt[2])
    tok = tiny_vlm.model.embed_tokens
    assert torch.equal(e.embeds[0, 66:69], tok(torch.tensor([7, 8, 9])))
    # row-wise reference loss: each row alone, unpadded
    total, count = 0.0, 0
    for i, n in enumerate([6, 3, 4]):
        o = tiny_vlm(input_ids=ids[i : i + 1, :n], images=px[i : i + 1], labels=lab[i : i + 1, :n])
        assert torch.allclose(o.logits[0], out.logits[i, : o.logits.shape[1]], atol=1e-5)
        sup = (o.labels[0, 1:] != X).sum().item()
        total, count = total + o.loss.item() * sup, count + sup
    assert abs(out.loss.item() - total / count) < 1e-5
    out.loss.backward()
    assert tiny_vlm.model.mm_projector.peg.peg[0].weight.grad is not None


def test_text_only_batch_and_input_errors(tiny_vlm):
    ids, am = _pad([[1, 5, 6], [1, 7]]), _pad([[1, 1, 1], [1, 1]])
    out = tiny_vlm(input_ids=ids, images=None, attention_mask=am)
    assert out.logits.shape == (2, 3, 100) and out.loss is None
    with pytest.raises(ValueError, match="right-padded"):
        tiny_vlm(input_ids=ids, attention_mask=torch.tensor([[1, 1, 1], [0, 1, 1]]))
    with pytest.raises(ValueError, match="more than one"):
        tiny_vlm(input_ids=torch.tensor([[1, I, I]]), images=torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="images must be"):
        tiny_vlm(input_ids=torch.tensor([[1, I, 5]]), images=None)


def test_generate_batched_equals_single_and_stops_at_eos(tiny_vlm):
    ids = _pad([[1, 5, I, 7, 8, 9], [1, 3, 4], [1, I, 6]])
    am = _pad([[1] * 6, [1] * 3, [1] * 3])
    px = torch.randn(3, 3, 64, 64)
    gen = tiny_vlm.generate(input_ids=ids, images=px, attention_mask=am, max_new_tokens=6)
    assert gen.shape == (3, 6)
    for i, n in enumerate([6, 3, 3]):
        one = tiny_vlm.generate(input_ids=ids[i : i + 1, :n], images=px[i : i + 1], max_new_tokens=6)
        assert torch.equal(one[0], gen[i])
        # greedy with cache == argmax of a full forward over prompt + generated prefix
        full = torch.cat([ids[i : i + 1, :n], one[:, :-1]], 1)
        logits = tiny_vlm(input_ids=full, images=px[i : i + 1]).logits
        length = n + (63 if i != 1 else 0)
        assert torch.equal(logits[0, length - 1 :].argmax(-1), one[0])
    # a row stops at its first eos (kept), later slots get the pad id; stop when all rows are done
    eos = int(gen[0, 1])
    want = []
    for row in gen.tolist():
        k = row.index(eos) + 1 if eos in row else len(row)
        want.append(row[:k] + [-1] * (len(row) - k))
    n = max(len(r) - r.count(-1) for r in want)
    got = tiny_vlm.generate(input_ids=ids, images=px, attention_mask=am, max_new_tokens=6,
                            eos_token_id=eos, pad_token_id=-1)
    assert got.tolist() == [r[:n] for r in want]


def test_preprocess_pads_with_mean_colour(tiny_vlm):
    white = Image.new("RGB", (64, 32), (255, 255, 255))  # wide: padded top and bottom
    px = preprocess_image(white, tiny_vlm.config)
    assert px.shape == (3, 64, 64) and px.dtype == torch.float32
    mean, std = torch.tensor(CLIP_MEAN)[:, None], torch.tensor(CLIP_STD)[:, None]
    pad_val = (torch.tensor([122, 116, 104])[:, None] / 255.0 - mean) / std
    white_val = (1.0 - mean) / std
    assert torch.allclose(px[:, 0, :], pad_val.expand(3, 64), atol=1e-5)  # top band: mean colour
    assert torch.allclose(px[:, -1, :], pad_val.expand(3, 64), atol=1e-5)
    assert torch.allclose(px[:, 32, :], white_val.expand(3, 64), atol=1e-5)  # centre: the image
    # without `pad`: shortest edge resized and centre-cropped, no mean-colour band
    cfg = copy.deepcopy(tiny_vlm.config)
    cfg.image_aspect_ratio = "square"
    assert torch.allclose(preprocess_image(white, cfg), white_val[:, :, None].expand(3, 64, 64), atol=1e-5)
    rgba = Image.fromarray(np.full((10, 20, 4), 255, dtype=np.uint8), "RGBA")
    assert preprocess_image(rgba, tiny_vlm.config).shape == (3, 64, 64)


def test_presets_real_shapes_on_meta():
    """The released configs build through the same path (on the meta device: no memory)."""
    for fn, layers, hidden, heads, total in [
        (presets.mobilevlm_v2_1_7b_config, 24, 2048, 16, 1_674_121_216),
        (presets.mobilevlm_v2_7b_config, 32, 4096, 32, 7_062_943_744),
    ]:
        cfg = fn()
        assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (layers, hidden, heads)
        assert (cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (32000, 1, 2, 0)
        with torch.device("meta"):
            m = MobileVLM(cfg)
        assert m.num_vision_tokens == 144 and m.image_size == 336 and m.vision_tower.num_patches == 576
        assert sum(p.numel() for p in m.parameters()) == total


def test_toy_presets(toy_vision_dir):
    t = presets.toy_teacher_config(100, toy_vision_dir)
    s = presets.toy_student_config(100, toy_vision_dir)
    assert (t.num_hidden_layers, t.hidden_size, t.num_attention_heads, t.intermediate_size) == (4, 256, 8, 688)
    assert (s.num_hidden_layers, s.hidden_size, s.num_attention_heads, s.intermediate_size) == (2, 128, 4, 344)
    v = presets.toy_vision_config()
    assert (v.image_size // v.patch_size, v.hidden_size, v.num_hidden_layers) == (16, 64, 2)
    assert t.mm_hidden_size == s.mm_hidden_size == 64 and t.mm_projector_grid == 8


def test_preprocess_matches_transformers_clip_processor(tiny_vlm):
    """Same pixels as CLIPImageProcessor (its PIL backend) after the original expand2square."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from pipeline.models.image import PAD_COLOUR, expand_to_square

    proc = CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 80, 3), dtype=np.uint8))
    want = proc.preprocess(expand_to_square(img, PAD_COLOUR), return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(preprocess_image(img, tiny_vlm.config), want, atol=1e-6)
    cfg = copy.deepcopy(tiny_vlm.config)
    cfg.image_aspect_ratio = None
    want = proc.preprocess(img, return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(preprocess_image(img, cfg), want, atol=1e-6)
