"""Attention capture (`MobileVLM.forward_align`) against transformers' own eager attention.

The reference is the same weights run with eager attention and `output_attentions=True`; its
[B, H, L_emb, L_emb] probabilities are sliced with index sets derived here from the raw ids
(independently of pipeline.positions)."""

import copy

import pytest
import torch

from pipeline.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from pipeline.models import CaptureSpec, MobileVLM
from pipeline.models import capture as capture_mod
from pipeline.positions import sample_index

NV = 64  # toy vision tokens (8 x 8 grid)


def _batch():
    """Right-padded batch: a caption sample, a multi-turn sample, a text-only row, and an image
    placed last (|T| = 0). Labels are HF-style (unshifted), -100 on prompt/image/padding."""
    I, X = IMAGE_TOKEN_INDEX, IGNORE_INDEX
    rows = [
        ([1, I, 11, 12, 13, 2], [X, X, 11, 12, 13, 2]),
        ([1, 20, 21, 22, I, 30, 31, 40, 41, 2, 32, 33, 42, 43, 44, 2],
         [X, X, X, X, X, X, X, 40, 41, 2, X, X, 42, 43, 44, 2]),
        ([1, 50, 51, 52, 60, 61, 2], [X, X, X, X, 60, 61, 2]),
        ([1, 70, I], [X, X, X]),
    ]
    n = max(len(r[0]) for r in rows)
    ids = torch.zeros(len(rows), n, dtype=torch.long)
    lab = torch.full((len(rows), n), X, dtype=torch.long)
    am = torch.zeros(len(rows), n, dtype=torch.long)
    for i, (r, lb) in enumerate(rows):
        ids[i, : len(r)], lab[i, : len(r)], am[i, : len(r)] = torch.tensor(r), torch.tensor(lb), 1
    return ids, am, lab, torch.randn(len(rows), 3, 64, 64)


def _ranges(ids_row, n):
    """(length, V range, T range) of one sample, derived from its raw ids."""
    where = (ids_row[:n] == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
    if not where:
        return n, (0, 0), (n, n)
    p = where[0]
    length = n - 1 + NV
    return length, (p, p + NV), (p + NV, length)


def _reference(model, ids, am, px):
    """Per-layer eager probabilities [B, H, L_emb, L_emb] from transformers' eager attention."""
    ref = MobileVLM(model.config, attn_implementation="eager").eval()
    ref.load_state_dict(model.state_dict())
    e = ref.embed_inputs(ids, px, am)
    with torch.no_grad():
        out = ref.model(inputs_embeds=e.embeds, attention_mask=e.attention_mask, output_attentions=True)
    return out.attentions


def _slice(p, length, v, t, block):
    rows, cols = {"tv": (t, v), "vv": (v, v), "tt": (t, t), "full": ((0, length), (0, length))}[block]
    return p[:, rows[0] : rows[1], cols[0] : cols[1]]


SPECS = [
    CaptureSpec(layers=("first",), blocks=("tv",)),
    CaptureSpec(layers=("first", "last"), blocks=("tv", "vv", "tt", "full")),
    CaptureSpec(layers=("last",), blocks=("tt",)),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "+".join(s.layers) + ":" + "+".join(s.blocks))
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_capture_equals_eager_probabilities(tiny_vlm, spec, impl):
    model = tiny_vlm if impl == "sdpa" else MobileVLM(tiny_vlm.config, attn_implementation="eager").eval()
    model.load_state_dict(tiny_vlm.state_dict())
    ids, am, lab, px = _batch()
    ref = _reference(tiny_vlm, ids, am, px)
    with torch.no_grad():
        al = model.forward_align(input_ids=ids, images=px, attention_mask=am, labels=lab, spec=spec)
    assert set(al.attn) == {(l, b) for l in spec.layers for b in spec.blocks}
    layer_idx = {"first": 0, "last": model.config.num_hidden_layers - 1}
    for (layer, block), per_sample in al.attn.items():
        assert len(per_sample) == ids.shape[0]
        for i, got in enumerate(per_sample):
            length, v, t = _ranges(ids[i], int(am[i].sum()))
            if v == (0, 0) and block != "full":  # text-only: no V, no T
                assert got.numel() == 0 and got.shape[0] == model.config.num_attention_heads
                continue
            want = _slice(ref[layer_idx[layer]][i], length, v, t, block)
            assert got.shape == want.shape, (layer, block, i)
            assert got.dtype == torch.float32
            assert got.numel() == 0 or (got - want).abs().max().item() <= 1e-5, (layer, block, i)


def test_capture_in_row_chunks_matches_whole(tiny_vlm, monkeypatch):
    ids, am, lab, px = _batch()
    spec = CaptureSpec(layers=("first",), blocks=("tv", "full"))
    with torch.no_grad():
        whole = tiny_vlm.forward_align(input_ids=ids, images=px, attention_mask=am, labels=lab, spec=spec)
        monkeypatch.setattr(capture_mod, "_ROW_CHUNK", 7)  # many chunks, boundaries inside V and T
        chunked = tiny_vlm.forward_align(input_ids=ids, images=px, attention_mask=am, labels=lab, spec=spec)
    for key in whole.attn:
        for a, b in zip(whole.attn[key], chunked.attn[key]):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-7)  # BLAS blocking may differ


def test_align_output_fields(tiny_vlm):
    ids, am, lab, px = _batch()
    with torch.no_grad():
        al = tiny_vlm.forward_align(input_ids=ids, images=px, attention_mask=am, labels=lab,
                                    output_hidden_states=True)
        plain = tiny_vlm(input_ids=ids, images=px, attention_mask=am, labels=lab)
        vt = tiny_vlm.encode_images(px)
    b = ids.shape[0]
    lengths = [_ranges(ids[i], int(am[i].sum()))[0] for i in range(b)]
    assert al.logits.shape == (b, max(lengths), 100)
    assert torch.allclose(al.logits, plain.logits, atol=1e-6)  # capture does not change the forward
    assert torch.allclose(al.loss, plain.loss)
    assert al.attention_mask.sum(1).tolist() == lengths
    assert al.vision_tokens.shape == (b, NV, 128)
    for i in range(b):
        has_img = bool((ids[i] == IMAGE_TOKEN_INDEX).any())
        expect = vt[i] if has_img else torch.zeros_like(vt[i])
        assert torch.allclose(al.vision_tokens[i], expect, atol=1e-6)
        n = int(am[i].sum())
        si = sample_index(ids[i, :n].tolist(), lab[i, :n].tolist(), NV)
        assert al.index[i].length == si.length and al.index[i].v_start == si.v_start
        assert al.index[i].n_vision == si.n_vision and al.index[i].resp.tolist() == si.resp.tolist()
        # embedded labels: supervised exactly at resp + 1
        sup = (al.labels[i] != IGNORE_INDEX).nonzero().flatten()
        assert sup.tolist() == (si.resp + 1).tolist()
    assert len(al.hidden_states) == tiny_vlm.config.num_hidden_layers + 1
    assert all(getattr(l.self_attn, "_alignkd_capture", None) is None for l in tiny_vlm.model.layers)


def test_gradients_flow_from_captured_block(tiny_vlm):
    """A loss on first-layer T->V attention reaches q_proj/k_proj of layer 0 and the projector,
    with the same gradient as the eager reference; the frozen tower gets none."""
    tiny_vlm.train()
    ids, am, lab, px = _batch()
    al = tiny_vlm.forward_align(input_ids=ids, images=px, attention_mask=am, labels=lab,
                                spec=CaptureSpec(layers=("first",), blocks=("tv",)))
    loss = sum((a**2).sum() for a in al.attn[("first", "tv")])
    loss.backward()
    attn0 = tiny_vlm.model.layers[0].self_attn
    for p in (attn0.q_proj.weight, attn0.k_proj.weight, *tiny_vlm.model.mm_projector.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_vlm.vision_tower.parameters())

    ref = MobileVLM(tiny_vlm.config, attn_implementation="eager").train()
    ref.load_state_dict(tiny_vlm.state_dict())
    e = ref.embed_inputs(ids, px, am)
    out = ref.model(inputs_embeds=e.embeds, attention_mask=e.attention_mask, output_attentions=True)
    ref_loss = 0.0
    for i in range(ids.shape[0]):
        length, v, t = _ranges(ids[i], int(am[i].sum()))
        if v != (0, 0):
            ref_loss = ref_loss + (_slice(out.attentions[0][i], length, v, t, "tv") ** 2).sum()
    ref_loss.backward()
    assert torch.allclose(loss, ref_loss, atol=1e-5)
    g, g_ref = attn0.q_proj.weight.grad, ref.model.layers[0].self_attn.q_proj.weight.grad
    assert torch.allclose(g, g_ref, atol=1e-5 * g_ref.abs().max().item())


def test_capture_state_is_removed_on_error(tiny_vlm):
    ids, am, lab, px = _batch()

    def boom(*_):
        raise RuntimeError("boom")

    h = tiny_vlm.model.layers[-1].register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            tiny_vlm.forward_align(input_ids=ids, images=px, attention_mask=am,
                                   spec=CaptureSpec(layers=("first", "last"), blocks=("tv",)))
    finally:
        h.remove()
    assert all(getattr(l.self_attn, "_alignkd_capture", None) is None for l in tiny_vlm.model.layers)


def test_capture_spec_validation_and_text_only_batch(tiny_vlm):
    with pytest.raises(ValueError, match="unknown"):
        CaptureSpec(layers=("middle",))
    with pytest.raises(ValueError, match="unknown"):
        CaptureSpec(blocks=("vt",))
    ids = torch.tensor([[1, 5, 6, 7], [1, 8, 0, 0]])
    am = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.no_grad():
        al = tiny_vlm.forward_align(input_ids=ids, images=None, attention_mask=am,
                                    spec=CaptureSpec(layers=("first",), blocks=("tv", "full")))
    assert al.vision_tokens is None and al.labels is None and al.loss is None
    assert [tuple(a.shape) for a in al.attn[("first", "tv")]] == [(4, 0, 0), (4, 0, 0)]
    assert [tuple(a.shape) for a in al.attn[("first", "full")]] == [(4, 4, 4), (4, 2, 2)]
    assert al.attn[("first", "full")][1][:, 0, 0].eq(1).all()  # causal: first row attends to itself


def test_single_layer_model_first_and_last_coincide(toy_vision_dir, seed):
    from toy_world.presets import toy_student_config

    cfg = toy_student_config(100, toy_vision_dir)
    cfg.num_hidden_layers = 1
    m = MobileVLM(copy.deepcopy(cfg)).eval()
    ids, am, lab, px = _batch()
    with torch.no_grad():
        al = m.forward_align(input_ids=ids, images=px, attention_mask=am,
                             spec=CaptureSpec(layers=("first", "last"), blocks=("tv",)))
    for a, b in zip(al.attn[("first", "tv")], al.attn[("last", "tv")]):
        assert torch.equal(a, b)


def test_capture_under_activation_checkpointing(tiny_vlm):
    """Recomputed layers must save what their first run saved: capture stays outside them."""
    tiny_vlm.train()
    ckpt = copy.deepcopy(tiny_vlm)
    ckpt.gradient_checkpointing_enable()
    ids, am, lab, px = _batch()
    grads = []
    for m in (tiny_vlm, ckpt):
        al = m.forward_align(input_ids=ids, images=px, attention_mask=am, labels=lab,
                             spec=CaptureSpec(layers=("first", "last"), blocks=("tv",)))
        loss = al.loss + sum((a**2).sum() for v in al.attn.values() for a in v)
        loss.backward()
        grads.append(m.model.layers[0].self_attn.q_proj.weight.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-7)
