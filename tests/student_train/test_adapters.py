"""Head/token adapters: shapes, both directions, the per-config container, gradients."""

import pytest
import torch
from torch import nn

from pipeline.workflow import LossConfig
from student_train.adapters import Adapters, HeadAdapter, TokenAdapter
from student_train.losses import resolve_loss


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_head_adapter_is_a_1x1_conv_over_heads():
    ad = HeadAdapter(4, 8)
    a = torch.rand(4, 3, 5)  # [H_in, r, c]
    out = ad(a)
    assert out.shape == (8, 3, 5)
    w, b = ad.conv.weight[:, :, 0, 0], ad.conv.bias  # [8, 4], [8]
    for o in range(8):  # slow reference: out[o] = Σ_h W[o, h] A[h] + b[o]
        ref = sum(w[o, h] * a[h] for h in range(4)) + b[o]
        torch.testing.assert_close(out[o], ref, rtol=1e-6, atol=1e-6)
    assert ad(a.unsqueeze(0).repeat(2, 1, 1, 1)).shape == (2, 8, 3, 5)  # batched form
    with pytest.raises(ValueError, match="expects"):
        ad(torch.rand(3, 3, 5))


def test_token_adapter_is_a_linear_on_the_hidden_axis():
    ad = TokenAdapter(6, 10)
    v = torch.randn(2, 7, 6)
    torch.testing.assert_close(ad(v), v @ ad.proj.weight.T + ad.proj.bias)
    with pytest.raises(ValueError, match="expects"):
        ad(torch.randn(7, 5))


@pytest.mark.parametrize("direction,heads,tokens", [
    ("student_to_teacher", (4, 8), (6, 10)),  # 16→32 / 2048→4096 at real size
    ("teacher_to_student", (8, 4), (10, 6)),  # the paper's public code: Conv2d(32→16), 4096→2048
])
def test_adapters_container_directions(direction, heads, tokens):
    ads = Adapters(4, 8, 6, 10, direction=direction, attn_keys=[("first", "tv"), ("last", "tv")], tokens=True)
    for layer in ("first", "last"):
        h = ads.head(layer, "tv")
        assert (h.h_in, h.h_out) == heads
    assert (ads.token().d_in, ads.token().d_out) == tokens
    # adapters registered in a trained module are in its parameters and its state_dict
    trained = nn.Module()
    trained.student = nn.Linear(2, 2)
    trained.adapters = ads
    names = {n for n, _ in trained.named_parameters()}
    assert {"adapters.heads.first_tv.conv.weight", "adapters.heads.last_tv.conv.weight",
            "adapters.tokens.proj.weight"} <= names
    assert "adapters.tokens.proj.bias" in trained.state_dict()


def test_adapters_for_loss_builds_only_active_ones():
    sft = Adapters.for_loss(resolve_loss(LossConfig(preset="sft")), 4, 8, 6, 10)
    assert len(list(sft.parameters())) == 0 and sft.tokens is None
    with pytest.raises(KeyError, match="no head adapter"):
        sft.head("first", "tv")
    attn = Adapters.for_loss(resolve_loss(LossConfig(preset="attn")), 4, 8, 6, 10)
    assert attn.head_names == ("first_tv",) and attn.tokens is None
    last = Adapters.for_loss(resolve_loss(LossConfig(preset="last", adapter_direction="teacher_to_student")), 4, 8, 6, 10)
    assert last.head_names == ("first_tv", "last_tv") and last.token().d_in == 10
    with pytest.raises(ValueError, match="direction"):
        Adapters(4, 8, 6, 10, direction="sideways")


def test_adapters_get_gradients():
    ads = Adapters(4, 8, 6, 10)
    a_s = torch.rand(4, 3, 5, requires_grad=True)
    v_s = torch.randn(7, 6, requires_grad=True)
    loss = (ads.head("first", "tv")(a_s) - torch.rand(8, 3, 5)).pow(2).mean() + (ads.token()(v_s) - torch.randn(7, 10)).pow(2).mean()
    loss.backward()
    for n, p in ads.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    assert a_s.grad.abs().sum() > 0 and v_s.grad.abs().sum() > 0


def test_head_adapter_as_initialised_is_near_the_least_squares_adapter_on_a_real_batch(tiny_world, tiny_store):
    """On a cached batch of the real loader (teacher T→V maps from the store, the student's from its
    own forward), L_attn with the adapter as built is within a small factor of the best affine
    head map (least squares over every entry); PyTorch's default conv init was ~100x above it."""
    from pipeline.models import CaptureSpec, MobileVLM
    from student_train.data import build_train_loader
    from student_train.losses.attention import attention_distill_loss

    wf = tiny_world.workflow()
    batch = next(iter(build_train_loader(wf, "short", "finetune", "cached", 0, 1, 8, seed=0)[0]))
    student = MobileVLM.from_pretrained(wf.models.student)
    with torch.no_grad():
        al = student.forward_align(input_ids=batch.input_ids, images=batch.images, attention_mask=batch.attention_mask,
                                   labels=batch.labels, spec=CaptureSpec(layers=("first",), blocks=("tv",)))
    s_maps, t_maps = al.attn[("first", "tv")], batch.teacher.attn[("first", "tv")]
    pairs = [(s, t) for s, t in zip(s_maps, t_maps) if s.numel()]
    assert pairs, "the batch has no image sample"
    h_s, h_t = pairs[0][0].shape[0], pairs[0][1].shape[0]
    # least squares: teacher[o, i, j] ≈ Σ_h W[o, h] student[h, i, j] + b[o], over all entries
    x = torch.cat([s.flatten(1) for s, _ in pairs], 1).T.double()  # [N, H_s]
    y = torch.cat([t.flatten(1) for _, t in pairs], 1).T.double()  # [N, H_t]
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    coef = torch.linalg.lstsq(x1, y).solution  # [H_s + 1, H_t]
    fitted = HeadAdapter(h_s, h_t)
    with torch.no_grad():
        fitted.conv.weight.copy_(coef[:-1].T.float()[:, :, None, None])
        fitted.conv.bias.copy_(coef[-1].float())
    default = HeadAdapter(h_s, h_t)
    nn.Conv2d.reset_parameters(default.conv)  # PyTorch's default init (what the adapters used to start from)
    loss = {name: float(attention_distill_loss([s for s, _ in pairs], [t for _, t in pairs], ad).detach())
            for name, ad in (("init", HeadAdapter(h_s, h_t)), ("fitted", fitted), ("default", default))}
    assert loss["fitted"] <= loss["init"] <= 3.0 * loss["fitted"], loss
    assert loss["default"] > 10.0 * loss["init"], loss


def test_token_adapter_starts_as_a_tiled_identity():
    from student_train.adapters import tiled_identity

    up = TokenAdapter(3, 6)
    v = torch.randn(2, 3)
    torch.testing.assert_close(up(v), torch.cat([v, v], -1))  # widening copies each feature
    down = TokenAdapter(6, 3)
    w = torch.randn(2, 6)
    torch.testing.assert_close(down(w), (w[:, :3] + w[:, 3:]) / 2)  # narrowing averages the folded ones
    assert tiled_identity(4, 4).equal(torch.eye(4))
    assert float(up.proj.bias.abs().sum()) == 0.0 and float(HeadAdapter(4, 8).conv.bias.abs().sum()) == 0.0
