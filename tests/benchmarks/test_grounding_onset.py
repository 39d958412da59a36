"""`python -m benchmarks.grounding_onset` on a tiny real toy world: it trains, measures image use
on held-out records it never trained on, and writes the curve."""

import json

from benchmarks import grounding_onset
from tests.toy_world.test_toy_world import small_workflow
from toy_world import build_world


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


def test_packed_qa_and_answer_accuracy(tmp_path):
    """qa-packed: `--turns` one-word questions per record, held-out images never trained on; the
    forced answer accuracy equals a slow reference: greedy generation's first token, one record at
    a time."""
    import torch
    from transformers import AutoTokenizer

    from pipeline.constants import IGNORE_INDEX
    from pipeline.models import MobileVLM
    from pipeline.templates import encode_conversation, encode_prompt

    world = tmp_path / "world"
    build_world(small_workflow(n_images=80), world)
    held, train = grounding_onset.packed_qa(world, turns=3, n_records=40, seed=0)
    assert len(held) == grounding_onset.HELD and len(train) == 40
    assert not {r["image"] for r in held} & {r["image"] for r in train}
    for r in held + train:
        conv = r["conversations"]
        assert 2 <= len(conv) <= 6 and conv[0]["value"].startswith("<image>\n")
        assert all(h["value"].endswith("Answer with one word.") for h in conv[0::2])

    curve = grounding_onset.main(["--world", str(world), "--model", "student_init", "--data", "qa-packed",
                                  "--turns", "3", "--records", "8", "--steps", "2", "--every", "2", "--batch", "4"])
    assert 0.0 <= curve[-1]["answer_acc"] <= 1.0 and "answer_acc_other_image" in curve[-1]

    tok = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    model = MobileVLM.from_pretrained(world / "student_init")
    evals = json.loads((world / "data" / "eval.json").read_text())[:12]
    from evaluation.image_cache import PixelCache

    image = lambda rel, px=PixelCache(): px.pixels(world / "images" / rel, model)
    for swap in (False, True):
        pred, target = grounding_onset.first_answer_tokens(model, tok, evals, image, swap=swap, batch_size=5)
        for k, r in enumerate(evals):
            shown = evals[k - 1 if k % 5 else min(k + 4, len(evals) - 1)] if swap else r  # rolled within batches of 5
            ids = torch.tensor([encode_prompt(r["conversations"], "v1", tok, True).input_ids])
            greedy = model.generate(ids, images=image(shown["image"])[None], max_new_tokens=1)[0, 0]
            assert int(pred[k]) == int(greedy), (swap, k)
            first = next(t for t in encode_conversation(r["conversations"], "v1", tok, True).labels if t != IGNORE_INDEX)
            assert int(target[k]) == first
