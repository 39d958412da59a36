"""AlignKDLoss on real toy models: the student's `forward_align` output against targets reduced
from the toy teacher's `forward_align` the way the dump reduces them (pipeline.targets). Checks
the interfaces fit and that each term's gradient reaches the part of the student it should."""

import pytest
import torch

from pipeline.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from pipeline.models import CaptureSpec, MobileVLM
from pipeline.targets import focus_indices, sparse_topk
from pipeline.workflow import LossConfig
from student_train.adapters import Adapters
from student_train.losses import AlignKDLoss, TeacherBatch, gather_response, resolve_loss
from toy_world.presets import toy_student_config, toy_teacher_config

VOCAB = 100
SPEC = CaptureSpec(layers=("first",), blocks=("tv",))


def _inputs():
    I, X = IMAGE_TOKEN_INDEX, IGNORE_INDEX
    rows = [([1, I, 11, 12, 13, 2], [X, X, 11, 12, 13, 2]),
            ([1, 50, 51, 52, 60, 61, 2], [X, X, X, X, 60, 61, 2]),  # text-only
            ([1, 20, I, 30, 31, 40, 41, 2], [X, X, X, X, X, 40, 41, 2])]
    n = max(len(r) for r, _ in rows)
    ids, lab = torch.zeros(3, n, dtype=torch.long), torch.full((3, n), X)
    am = torch.zeros(3, n, dtype=torch.long)
    for i, (r, lb) in enumerate(rows):
        ids[i, : len(r)], lab[i, : len(r)], am[i, : len(r)] = torch.tensor(r), torch.tensor(lb), 1
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return dict(input_ids=ids, attention_mask=am, labels=lab, images=images)


def _teacher_batch(t_out, dense: bool, k: int = 8) -> TeacherBatch:
    tv = t_out.attn[("first", "tv")]
    logits_r, _ = gather_response(t_out.logits, t_out.index)
    return TeacherBatch(
        attn={("first", "tv"): tv},
        focus=[focus_indices(a, 16) if ix.has_image else None for a, ix in zip(tv, t_out.index)],
        vision_tokens=t_out.vision_tokens,
        **({"logits": logits_r} if dense else {"sparse": sparse_topk(logits_r, k)}))


@pytest.fixture(scope="module")
def models(toy_vision_dir):
    """(student, teacher config, the teacher's AlignOutput on `_inputs()`), built once."""
    torch.manual_seed(0)
    student = MobileVLM(toy_student_config(VOCAB, toy_vision_dir)).train()
    teacher = MobileVLM(toy_teacher_config(VOCAB, toy_vision_dir)).eval()
    with torch.no_grad():
        t_out = teacher.forward_align(**_inputs(), spec=SPEC)
    return student, teacher.config, t_out


@pytest.mark.parametrize("direction", ["student_to_teacher", "teacher_to_student"])
def test_alignkd_on_toy_models(models, seed, direction):
    student, tc, t_out = models
    spec, x = SPEC, _inputs()
    tb = _teacher_batch(t_out, dense=False)
    r = resolve_loss(LossConfig(adapter_direction=direction))
    sc = student.config
    loss_fn = AlignKDLoss(r, Adapters.for_loss(r, sc.num_attention_heads, tc.num_attention_heads,
                                               sc.hidden_size, tc.hidden_size))
    s_out = student.forward_align(**x, spec=spec)
    total, logs = loss_fn(s_out, tb)
    assert set(logs) == {"loss", "sup", "rkl", "attn", "focus", "all_tokens"}
    assert abs(logs["sup"] - s_out.loss.item()) <= 1e-5 * s_out.loss.item()  # = the model's own CE
    # each alignment term alone reaches the student part it is meant to teach
    named = dict(student.named_parameters())
    q0, proj = named["model.layers.0.self_attn.q_proj.weight"], named["model.mm_projector.mlp.mlp.0.weight"]
    for term, param in (("attn", q0), ("all_tokens", proj)):
        single = resolve_loss(LossConfig(preset="sft", sup=0.0, adapter_direction=direction, **{term: 1.0}))
        (g,) = torch.autograd.grad(AlignKDLoss(single, loss_fn.adapters)(s_out, tb)[0], param, retain_graph=True)
        assert g.abs().sum() > 0, term
    total.backward()
    for n, p in loss_fn.adapters.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    # online (dense) and cached with k = vocab agree
    with torch.no_grad():
        s_out = student.forward_align(**x, spec=spec)
        _, dense = loss_fn(s_out, _teacher_batch(t_out, dense=True))
        _, full = loss_fn(s_out, _teacher_batch(t_out, dense=False, k=VOCAB))
    assert abs(dense["rkl"] - full["rkl"]) <= 1e-6 * dense["rkl"]
