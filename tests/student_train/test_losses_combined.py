"""AlignKDLoss over a tiny ragged batch (image + text-only samples) against the sum of its parts
computed independently; cached (sparse) vs online (dense) teacher; errors; the sup term."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from pipeline.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from pipeline.positions import sample_index
from pipeline.targets import sparse_topk
from pipeline.workflow import LossConfig
from student_train.adapters import Adapters
from student_train.losses import (
    AlignKDLoss,
    NonFiniteLossError,
    TeacherBatch,
    attention_distill_loss,
    resolve_loss,
    reverse_kl_dense,
    sft_loss,
    vision_token_losses,
)

V, VOCAB, H_S, H_T, D_S, D_T = 4, 20, 2, 4, 6, 10


@dataclass
class StudentOut:  # the AlignOutput fields AlignKDLoss reads (pipeline.models.AlignOutput)
    logits: torch.Tensor
    labels: torch.Tensor
    index: list
    attn: dict
    vision_tokens: torch.Tensor


def _batch(keys=(("first", "tv"),), seed=0):
    """3 samples: image, text-only, image; different lengths; right-padded to L_emb."""
    g = torch.Generator().manual_seed(seed)
    raw = [  # (input_ids, labels) unembedded, HF-aligned
        ([1, 5, IMAGE_TOKEN_INDEX, 6, 7, 8, 9], [-100, -100, -100, -100, 8, 9, 2]),
        ([1, 5, 6, 7, 8], [-100, -100, 7, 8, 2]),
        ([1, IMAGE_TOKEN_INDEX, 6, 7, 8, 9, 10, 11], [-100, -100, -100, 7, 8, -100, 10, 11]),
    ]
    index = [sample_index(i, l, V) for i, l in raw]
    L = max(ix.length for ix in index)
    labels = torch.full((3, L), IGNORE_INDEX)
    for b, ((ids, lab), ix) in enumerate(zip(raw, index)):
        p = ids.index(IMAGE_TOKEN_INDEX) if IMAGE_TOKEN_INDEX in ids else None
        emb = lab if p is None else lab[:p] + [IGNORE_INDEX] * V + lab[p + 1:]
        labels[b, : len(emb)] = torch.tensor(emb)
    s_logits = torch.randn(3, L, VOCAB, generator=g).requires_grad_()
    t_logits = torch.randn(3, L, VOCAB, generator=g)

    def block(ix, h, key):
        t, v = ix.n_text_after, ix.n_vision
        r, c = {"tv": (t, v), "vv": (v, v), "tt": (t, t), "full": (ix.length, ix.length)}[key[1]]
        return torch.rand(h, r, c, generator=g)

    s_attn = {k: [block(ix, H_S, k).requires_grad_() for ix in index] for k in keys}
    t_attn = {k: [block(ix, H_T, k) for ix in index] for k in keys}
    s_vis = torch.randn(3, V, D_S, generator=g).requires_grad_()
    t_vis = [torch.randn(V, D_T, generator=g) if ix.has_image else None for ix in index]
    focus = [torch.tensor([0, 3]) if ix.has_image else None for ix in index]
    t_r = torch.cat([t_logits[b, torch.from_numpy(ix.resp)] for b, ix in enumerate(index)])  # [N, vocab]
    student = StudentOut(s_logits, labels, index, s_attn, s_vis)
    return student, t_attn, t_vis, focus, t_r


def _loss(preset="alignkd", direction="student_to_teacher", **over):
    r = resolve_loss(LossConfig(preset=preset, adapter_direction=direction, **over))
    torch.manual_seed(0)
    return AlignKDLoss(r, Adapters.for_loss(r, H_S, H_T, D_S, D_T)), r


@pytest.mark.parametrize("direction", ["student_to_teacher", "teacher_to_student"])
def test_total_is_the_weighted_sum_of_independent_parts(direction):
    loss_fn, r = _loss(direction=direction)
    st, t_attn, t_vis, focus, t_r = _batch()
    tb = TeacherBatch(attn=t_attn, focus=focus, vision_tokens=t_vis, logits=t_r)
    total, logs = loss_fn(st, tb)
    assert set(logs) == {"loss", "sup", "rkl", "attn", "focus", "all_tokens"}
    # independent references: full-sequence shifted CE; RKL over a per-sample loop of positions
    sup = sft_loss(st.logits, st.labels)
    s_r = torch.cat([st.logits[b, p] for b, ix in enumerate(st.index) for p in ix.resp.tolist()]).view(-1, VOCAB)
    rkl = reverse_kl_dense(s_r, t_r)
    attn = attention_distill_loss(st.attn[("first", "tv")], t_attn[("first", "tv")],
                                  loss_fn.adapters.head("first", "tv"), direction)
    vis = vision_token_losses(st.vision_tokens, t_vis, focus, [True, False, True], loss_fn.adapters.token(), direction)
    ref = sup + rkl + attn + vis["focus"] + 0.1 * vis["all_tokens"]
    assert abs(total.item() - ref.item()) <= 1e-6 * ref.item()
    for name, v in (("sup", sup), ("rkl", rkl), ("attn", attn), ("focus", vis["focus"])):
        assert abs(logs[name] - v.item()) <= 1e-6 * abs(v.item()), name
    total.backward()
    for n, p in loss_fn.adapters.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    assert st.attn[("first", "tv")][0].grad.abs().sum() > 0 and st.vision_tokens.grad[0].abs().sum() > 0
    assert st.vision_tokens.grad[1].abs().sum() == 0  # the text-only sample has no vision loss


def test_cached_full_vocab_equals_online_dense():
    loss_fn, _ = _loss()
    st, t_attn, t_vis, focus, t_r = _batch()
    common = dict(attn=t_attn, focus=focus, vision_tokens=t_vis)
    _, online = loss_fn(st, TeacherBatch(**common, logits=t_r))
    _, cached = loss_fn(st, TeacherBatch(**common, sparse=sparse_topk(t_r, VOCAB)))
    for name in online:
        assert abs(cached[name] - online[name]) <= 1e-6 * abs(online[name]), name


def test_zero_weight_terms_are_not_computed_and_need_no_targets():
    loss_fn, _ = _loss("rkl", tail_model="none")
    assert len(list(loss_fn.parameters())) == 0
    st, _, _, _, t_r = _batch()
    total, logs = loss_fn(st, TeacherBatch(sparse=sparse_topk(t_r, 5)))  # no attention, tokens, focus
    assert set(logs) == {"loss", "sup", "rkl"}
    _, logs = _loss("sft")[0](st, TeacherBatch())
    assert set(logs) == {"loss", "sup"}


def test_several_attention_maps_are_logged_each():
    loss_fn, r = _loss("last", attn_block="tt")
    keys = r.attn_keys
    assert keys == (("first", "tt"), ("last", "tt"))
    st, t_attn, t_vis, focus, t_r = _batch(keys=keys)
    _, logs = loss_fn(st, TeacherBatch(attn=t_attn, focus=focus, vision_tokens=t_vis, logits=t_r))
    assert abs(logs["attn"] - logs["attn/first_tt"] - logs["attn/last_tt"]) < 1e-6


def test_errors_name_the_problem():
    loss_fn, _ = _loss()
    st, t_attn, t_vis, focus, t_r = _batch()
    ok = dict(attn=t_attn, focus=focus, vision_tokens=t_vis)
    bad = sparse_topk(t_r, 5)
    bad.logprobs[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="'rkl'") as e:
        loss_fn(st, TeacherBatch(**ok, sparse=bad))
    assert e.value.term == "rkl"
    with pytest.raises(ValueError, match="3 positions"):
        loss_fn(st, TeacherBatch(**ok, logits=t_r[:3]))
    with pytest.raises(ValueError, match="exactly one"):
        loss_fn(st, TeacherBatch(**ok, logits=t_r, sparse=sparse_topk(t_r, 5)))
    with pytest.raises(KeyError, match="teacher attention"):
        loss_fn(st, TeacherBatch(focus=focus, vision_tokens=t_vis, logits=t_r))


def test_teacher_batch_to_keeps_structure():
    _, t_attn, t_vis, focus, t_r = _batch()
    tb = TeacherBatch(attn=t_attn, focus=focus, vision_tokens=t_vis, sparse=sparse_topk(t_r, 3)).to("cpu")
    assert tb.focus[1] is None and tb.vision_tokens[1] is None and tb.sparse.ids.shape == (t_r.shape[0], 3)
    assert np.array_equal(tb.attn[("first", "tv")][0].numpy(), t_attn[("first", "tv")][0].numpy())
