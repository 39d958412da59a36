"""evaluation.heldout on a real tiny MobileVLM and a locally trained tokenizer, against slow
references written out independently:

* `evaluate` (batched, length-sorted, right-padded greedy generation with the KV cache) gives the
  same text as one record at a time without the cache, appending the argmax of a full forward
  until </s> or max_new_tokens -- with image and text-only records in one batch, an all-text
  batch, rows that stop at </s> and rows that do not -- and returns the predictions in input order
  with their ids, tasks, prompts, answers and exact-match flags;
* `summarise` counts per task and overall, `write_predictions` writes exactly its six columns as
  JSONL, `normalise` ignores case, surrounding space and trailing punctuation only;
* `image_use` equals a float64 per-record sum of caption-token NLLs with each record's own image and
  with the image of the record before it in its batch (cyclically), a lone last record joins the
  previous batch, an image-blind projector gives a gap of exactly 0, and < 2 records is an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from evaluation.heldout import (
    Prediction,
    evaluate,
    image_use,
    normalise,
    summarise,
    with_other_images,
    write_predictions,
)
from pipeline.constants import IGNORE_INDEX
from pipeline.models import MobileVLM, preprocess_image
from pipeline.templates import encode_conversation, encode_prompt
from tests.pipeline.data_fixtures import caption, qa
from toy_world.presets import toy_student_config

EOS = 2
MAX_NEW = 6


@pytest.fixture
def vlm(toy_vision_dir: Path, tok: Any) -> MobileVLM:
    """Toy student over the tokenizer's vocabulary. initializer_range 0.1 (not 0.02) so that greedy
    generations differ between records instead of repeating one token."""
    torch.manual_seed(0)
    cfg = toy_student_config(len(tok), toy_vision_dir)
    cfg.initializer_range = 0.1
    return MobileVLM(cfg).eval()


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """Eight distinct noise PNGs of different sizes (both aspect ratios: the pad path is used)."""
    rng = np.random.default_rng(0)
    for i in range(8):
        h, w = (12 + 2 * i, 20) if i % 2 else (20, 10 + i)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    return tmp_path


def _pixels(root: Path, name: str, model: MobileVLM) -> torch.Tensor:
    with Image.open(root / name) as im:
        return preprocess_image(im.convert("RGB"), model.config)


# ------------------------------------------------------------------------------------ evaluate
@torch.no_grad()
def _slow_greedy(model: MobileVLM, tok: Any, rec: dict, root: Path, max_new: int) -> list[int]:
    """One record, no cache, no padding: append argmax(full forward logits at the last position)."""
    has_image = bool(rec.get("image"))
    ids = encode_prompt(rec["conversations"], "v1", tok, has_image).input_ids
    px = _pixels(root, rec["image"], model)[None] if has_image else None
    gen: list[int] = []
    for _ in range(max_new):
        x = torch.tensor([ids + gen])
        # a single unpadded row: the last embedded position is the last token (image expanded before it)
        logits = model(input_ids=x, images=px, attention_mask=torch.ones_like(x)).logits[:, -1]
        gen.append(int(logits[0].argmax()))
        if gen[-1] == EOS:
            break
    return gen


def _eval_records() -> list[dict]:
    """Eight v1 records, input order not sorted by prompt length: three short text-only prompts,
    four image prompts of middling length, one long text-only prompt (so, sorted and cut in
    threes: an all-text batch, an all-image batch, a mixed batch)."""
    recs = [
        qa("q-img-a", "im0.png", [("What colour is the square?", "red")]),
        qa("q-txt-a", None, [("yes", "no")]),
        qa("q-img-b", "im1.png", [("How many circles are there in the picture, left or right?", "two")]),
        qa("q-txt-long", None, [("Describe it. " + "left right top bottom small large shape shapes " * 3, "x")]),
        qa("q-img-c", "im2.png", [("Where is the triangle?", "top")]),
        qa("q-txt-b", None, [("two", "three")]),
        qa("q-img-d", "im3.png", [("Is there a red square and a blue circle?", "yes")]),
        qa("q-txt-c", None, [("one two", "four")]),
    ]
    for i, r in enumerate(recs):
        if i % 4 != 3:
            r["task"] = "colour" if i % 2 else "count"
    del recs[5]["id"]  # question_id falls back to the record's input index
    return recs


def test_evaluate_equals_uncached_one_at_a_time_greedy_in_input_order(vlm: MobileVLM, tok: Any,
                                                                     image_root: Path) -> None:
    recs = _eval_records()
    lens = {r.get("id", i): len(encode_prompt(r["conversations"], "v1", tok, "image" in r).input_ids)
            for i, r in enumerate(recs)}
    short_txt = [lens["q-txt-a"], lens[5], lens["q-txt-c"]]
    img = [lens[k] for k in ("q-img-a", "q-img-b", "q-img-c", "q-img-d")]
    assert max(short_txt) < min(img) and max(img) < lens["q-txt-long"]  # the batch layout above
    assert sorted(lens.values()) != [lens[r.get("id", i)] for i, r in enumerate(recs)]

    # make </s> reachable: its lm_head row becomes 1.5 x the row of the token record 0 picks at
    # step 2, so </s> wins wherever that token won (its winning logit is positive)
    x = _slow_greedy(vlm, tok, recs[0], image_root, MAX_NEW)[2]
    with torch.no_grad():
        vlm.lm_head.weight[EOS] = 1.5 * vlm.lm_head.weight[x]

    ref = [_slow_greedy(vlm, tok, r, image_root, MAX_NEW) for r in recs]
    stopped = [g for g in ref if g[-1] == EOS]
    assert stopped and any(len(g) < MAX_NEW for g in stopped)  # rows that stop at </s> ...
    assert any(len(g) == MAX_NEW and EOS not in g for g in ref)  # ... and rows that run out
    want = [tok.decode(g, skip_special_tokens=True).strip() for g in ref]
    assert len(set(want)) >= 5  # the generations differ, so a permuted order would show
    # half the records get the model's own answer (in another case, with a full stop) as reference
    for i in (0, 3, 4, 6):
        recs[i]["answer"] = want[i].upper() + "."

    preds = evaluate(vlm, tok, recs, image_root, template="v1", batch_size=3, max_new_tokens=MAX_NEW,
                     progress=False)
    assert [p.prediction for p in preds] == want
    assert [p.question_id for p in preds] == [str(r.get("id", i)) for i, r in enumerate(recs)]
    assert [p.question_id for p in preds][5] == "5"
    assert [p.task for p in preds] == [r.get("task", "all") for r in recs]
    assert [p.answer for p in preds] == [str(r.get("answer", r["conversations"][-1]["value"])) for r in recs]
    assert [p.prompt for p in preds] == [r["conversations"][0]["value"].removeprefix("<image>\n") for r in recs]
    # the others keep their reference answers ("red", "no", ...), which the random model does not say
    assert all(w.lower() != r["conversations"][-1]["value"] for w, r in zip(want, recs))
    assert [p.correct for p in preds] == [i in (0, 3, 4, 6) for i in range(len(recs))]


# ------------------------------------------------------------------------ summarise / writing
def _pred(qid: str, task: str, correct: bool, **kw: Any) -> Prediction:
    return Prediction(question_id=qid, task=task, prompt=kw.get("prompt", "Q?"), answer=kw.get("answer", "a"),
                      prediction=kw.get("prediction", "a" if correct else "b"), correct=correct)


def test_summarise_counts_per_task_and_overall() -> None:
    preds = [_pred("1", "count", True), _pred("2", "colour", False), _pred("3", "count", False),
             _pred("4", "shape", True), _pred("5", "count", True), _pred("6", "colour", False)]
    s = summarise(preds)
    assert s["n"] == 6 and s["overall"] == pytest.approx(3 / 6)
    assert s["per_task"] == {"colour": {"acc": 0.0, "n": 2}, "count": {"acc": pytest.approx(2 / 3), "n": 3},
                             "shape": {"acc": 1.0, "n": 1}}
    assert list(s["per_task"]) == ["colour", "count", "shape"]
    assert summarise([]) == {"overall": 0.0, "n": 0, "per_task": {}}


def test_write_predictions_jsonl_columns(tmp_path: Path) -> None:
    preds = [_pred("q1", "count", True, prompt="How many?\nTwo lines", answer="two", prediction="Two."),
             _pred("7", "all", False, prompt="colour \"quoted\" é", answer="red", prediction="")]
    path = tmp_path / "deep" / "dir" / "preds.jsonl"
    write_predictions(preds, path)
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    rows = [json.loads(line) for line in lines]
    assert [list(r) for r in rows] == [["question_id", "task", "prompt", "answer", "prediction", "correct"]] * 2
    assert rows[0] == {"question_id": "q1", "task": "count", "prompt": "How many?\nTwo lines", "answer": "two",
                       "prediction": "Two.", "correct": True}
    assert rows[1] == {"question_id": "7", "task": "all", "prompt": "colour \"quoted\" é", "answer": "red",
                       "prediction": "", "correct": False}
    write_predictions(preds[:1], path)  # overwrites
    assert len(path.read_text().splitlines()) == 1


@pytest.mark.parametrize("a, b, same", [
    ("Red.", "red", True), (" Blue ", "blue", True), ("YES!?", "yes", True), ("two ,", "two", True),
    ("\nleft\t", "Left", True), ("red square", "red", False), ("red square", "Red Square!", True),
    ("re.d", "red", False), (".red", "red", False), ("", "", True), ("three", "tree", False),
])
def test_normalise(a: str, b: str, same: bool) -> None:
    assert (normalise(a) == normalise(b)) is same


# ----------------------------------------------------------------------------------- image_use
CAPTIONS = ["A red square and a blue circle on a white background.", "Two green triangles.", "A red square.",
            "yes no one two three", "There are two circles at the top left.", "The triangle is small.",
            "Blue circle.", "A large shape at the bottom right."]


def _caption_records(n: int) -> list[dict]:
    return [caption(i, f"im{i}.png", CAPTIONS[i]) for i in range(n)]


@torch.no_grad()
def _slow_image_use(model: MobileVLM, tok: Any, recs: list[dict], root: Path, batch_size: int,
                    shift: int = 1) -> tuple[float, float, int]:
    """Mean NLL per caption token (float64) with own / other image, one record per forward.
    Batches: consecutive runs of `batch_size`, a lone last record joined to the one before; the
    other image of batch row j is that of row j - shift (cyclically within the batch)."""
    batches = [recs[i : i + batch_size] for i in range(0, len(recs), batch_size)]
    if len(batches[-1]) == 1:
        batches = batches[:-2] + [batches[-2] + batches[-1]]
    own = other = 0.0
    n_tok = 0
    for batch in batches:
        px = [_pixels(root, r["image"], model) for r in batch]
        for j, r in enumerate(batch):
            enc = encode_conversation(r["conversations"], "plain", tok, True)
            ids, lab = torch.tensor([enc.input_ids]), torch.tensor([enc.labels])
            for key, img in (("own", px[j]), ("other", px[(j - shift) % len(batch)])):
                out = model(input_ids=ids, images=img[None], labels=lab)
                logp = F.log_softmax(out.logits[0].double(), dim=-1)  # [L_emb, V]
                target = out.labels[0, 1:]  # embedded coordinates: position t predicts t + 1
                keep = target != IGNORE_INDEX
                nll = -logp[:-1][keep].gather(1, target[keep][:, None]).sum().item()
                if key == "own":
                    own += nll
                    n_tok += int(keep.sum())
                else:
                    other += nll
    return own / n_tok, other / n_tok, n_tok


@pytest.mark.parametrize("n, batch_size", [(7, 3), (5, 2), (3, 32)])
def test_image_use_equals_per_record_reference(vlm: MobileVLM, tok: Any, image_root: Path, n: int,
                                               batch_size: int) -> None:
    """(7, 3) and (5, 2): the lone 7th / 5th record is merged into the batch before it."""
    recs = _caption_records(n)
    got = image_use(vlm, tok, recs, image_root, batch_size=batch_size, progress=False)
    own, other, n_tok = _slow_image_use(vlm, tok, recs, image_root, batch_size)
    assert got["n_captions"] == n and got["n_tokens"] == n_tok
    assert got["n_tokens"] == sum(sum(t != IGNORE_INDEX for t in encode_conversation(
        r["conversations"], "plain", tok, True).labels) for r in recs)
    assert got["loss_own_image"] == pytest.approx(own, abs=1e-4)
    assert got["loss_other_image"] == pytest.approx(other, abs=1e-4)
    assert got["gap"] == pytest.approx(other - own, abs=1e-4)
    assert abs(other - own) > 1e-3  # the images matter to this model: the swap is visible
    if n == 7:  # with 3- and 4-record batches the direction of the rotation matters too
        _, other_back, _ = _slow_image_use(vlm, tok, recs, image_root, batch_size, shift=-1)
        assert abs(other_back - other) > 1e-3


def test_image_use_gap_is_zero_for_image_blind_projector(vlm: MobileVLM, tok: Any, image_root: Path) -> None:
    """Zero the projector MLP's last Linear: every image becomes the same tokens (the PEG's bias)."""
    last = vlm.model.mm_projector.mlp.mlp[2]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        a, b = (vlm.encode_images(torch.stack([_pixels(image_root, f"im{i}.png", vlm) for i in (0, 1)])))
    assert torch.equal(a, b)
    got = image_use(vlm, tok, _caption_records(6), image_root, batch_size=4, progress=False)
    assert abs(got["gap"]) < 1e-6 and got["loss_own_image"] == got["loss_other_image"]
    assert got["n_captions"] == 6 and got["loss_own_image"] > 0


def test_image_use_lone_last_record_and_too_few(vlm: MobileVLM, tok: Any, image_root: Path) -> None:
    got = image_use(vlm, tok, _caption_records(3), image_root, batch_size=2, progress=False)
    assert got["n_captions"] == 3 and np.isfinite(got["gap"])
    got = image_use(vlm, tok, _caption_records(2), image_root, batch_size=1, progress=False)  # raised to 2
    assert got["n_captions"] == 2 and got["gap"] != 0
    for recs in ([], _caption_records(1)):
        with pytest.raises(ValueError, match="at least 2"):
            image_use(vlm, tok, recs, image_root, progress=False)


# ------------------------------------------------------------------------ exact match, other image
def test_with_other_images_never_shows_a_record_its_own_image() -> None:
    recs = [{"id": str(i), "image": im} for i, im in enumerate(["a", "a", "b", "c", "c", "a"])]
    got = with_other_images(recs)
    assert [r["image"] for r in got] == ["b", "b", "c", "a", "a", "b"]  # the next different one, cyclically
    assert [r["id"] for r in got] == [r["id"] for r in recs] and recs[0]["image"] == "a"  # copies
    with pytest.raises(ValueError, match="two distinct images"):
        with_other_images([{"image": "a"}, {"image": "a"}])


def test_other_image_predictions_differ_unless_the_projector_is_image_blind(vlm: MobileVLM, tok: Any,
                                                                          image_root: Path) -> None:
    recs = [r for r in _eval_records() if "image" in r]
    run = lambda rs: [p.prediction for p in evaluate(vlm, tok, rs, image_root, template="v1", batch_size=3,
                                                     max_new_tokens=MAX_NEW, progress=False)]
    assert run(recs) != run(with_other_images(recs))  # this random model's answers depend on the image
    last = vlm.model.mm_projector.mlp.mlp[2]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    assert run(recs) == run(with_other_images(recs))
