"""Presets reproduce the paper's ablations; explicit LossConfig values override; errors list all."""

import pytest

from pipeline.workflow import LossConfig, load_workflow
from student_train.losses import LossConfigError, resolve_loss

TABLE = {  # preset → (active terms, attention block, layers)
    "sft": (("sup",), "tv", ("first",)),
    "rkl": (("sup", "rkl"), "tv", ("first",)),
    "attn": (("sup", "rkl", "attn"), "tv", ("first",)),
    "focus": (("sup", "rkl", "attn", "focus"), "tv", ("first",)),
    "all": (("sup", "rkl", "attn", "focus", "all_tokens"), "tv", ("first",)),
    "alignkd": (("sup", "rkl", "attn", "focus", "all_tokens"), "tv", ("first",)),
    "vv": (("sup", "rkl", "attn", "focus", "all_tokens"), "vv", ("first",)),
    "tt": (("sup", "rkl", "attn", "focus", "all_tokens"), "tt", ("first",)),
    "full": (("sup", "rkl", "attn", "focus", "all_tokens"), "full", ("first",)),
    "last": (("sup", "rkl", "attn", "focus", "all_tokens"), "tv", ("first", "last")),
}


@pytest.mark.parametrize("preset", sorted(TABLE))
def test_presets_set_the_right_terms(preset):
    r = resolve_loss(LossConfig(preset=preset))
    active, block, layers = TABLE[preset]
    assert r.active == active
    assert (r.attn_block, r.attn_layers) == (block, layers)
    tt = r.teacher_targets()
    assert tt.attn == (tuple((l, block) for l in layers) if "attn" in active else ())
    assert tt.logits == ("rkl" in active) and tt.focus == ("focus" in active)
    assert tt.vision_tokens == ("focus" in active or "all_tokens" in active)


def test_alignkd_weights_are_the_papers():
    w = resolve_loss().weights  # L_v = L_focus + 0.1·L_all
    assert (w.sup, w.rkl, w.attn, w.focus, w.all_tokens) == (1.0, 1.0, 1.0, 1.0, 0.1)


def test_explicit_values_override_the_preset():
    r = resolve_loss(LossConfig(preset="alignkd", focus=0.1, all_tokens=1.0, rkl=0.0,
                                attn_block="full", attn_layers="first+last", tail_model="none",
                                adapter_direction="teacher_to_student"))
    assert (r.weights.focus, r.weights.all_tokens) == (0.1, 1.0)  # the public code's other form
    assert "rkl" not in r.active and not r.teacher_targets().logits
    assert r.attn_keys == (("first", "full"), ("last", "full"))
    assert (r.tail_model, r.adapter_direction) == ("none", "teacher_to_student")
    assert resolve_loss(LossConfig(preset="sft", attn=0.5)).attn_keys == (("first", "tv"),)


def test_every_problem_is_reported_at_once():
    with pytest.raises(LossConfigError) as e:
        resolve_loss(LossConfig(preset="nope", sup=-1.0, attn_block="xy", attn_layers="middle",
                                adapter_direction="up", tail_model="gauss"))
    msg = str(e.value)
    for field in ("preset", "sup", "attn_block", "attn_layers", "adapter_direction", "tail_model"):
        assert f"train.loss.{field}" in msg, field
    with pytest.raises(LossConfigError, match="every weight is 0"):
        resolve_loss(LossConfig(preset="sft", sup=0.0))


def test_from_a_workflow_file(tmp_path):
    p = tmp_path / "wf.yaml"
    p.write_text("train:\n  loss: {preset: focus, all_tokens: 1, attn_layers: first+last}\n")
    r = resolve_loss(load_workflow(p).train.loss)
    assert r.weights.all_tokens == 1.0 and r.active[-1] == "all_tokens"
    assert r.attn_layers == ("first", "last")


def test_attn_scale_multiplies_only_where_the_preset_distils_attention():
    """The toy workflows scale L_attn (attention probabilities ~1/|V| give an MSE of ~1e-4); a
    Table 3 row without the attention term must stay without it."""
    assert resolve_loss(LossConfig(preset="all", attn_scale=1000.0)).weights.attn == 1000.0
    assert resolve_loss(LossConfig(preset="all", attn=2.0, attn_scale=10.0)).weights.attn == 20.0
    rkl = resolve_loss(LossConfig(preset="rkl", attn_scale=1000.0))
    assert rkl.weights.attn == 0.0 and "attn" not in rkl.weights.active()
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(LossConfigError, match="attn_scale"):
            resolve_loss(LossConfig(preset="all", attn_scale=bad))
