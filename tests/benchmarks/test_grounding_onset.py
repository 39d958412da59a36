"""`python -m benchmarks.grounding_onset` on a tiny real toy world: it trains, measures image use
on held-out records it never trained on, and writes the curve."""

import json

from benchmarks import grounding_onset
from pipeline.toy import build_world
from tests.pipeline.test_toy_world import small_workflow


def test_curve_on_a_tiny_world(tmp_path):
    world = tmp_path / "world"
    build_world(small_workflow(n_pretrain=80), world)  # > HELD records, so some remain to train on
    out = tmp_path / "curve.json"
    curve = grounding_onset.main(["--world", str(world), "--model", "student_init", "--steps", "2",
                                  "--every", "1", "--batch", "4", "--out", str(out)])
    assert [r["step"] for r in curve] == [1, 2]
    for r in curve:
        assert r["n_captions"] == grounding_onset.HELD
        assert abs(r["gap"] - (r["loss_other_image"] - r["loss_own_image"])) < 2e-4
    assert json.loads(out.read_text())["curve"] == curve
