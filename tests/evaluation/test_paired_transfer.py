"""Paired bootstrap intervals (evaluation.paired) and transfer metrics (evaluation.transfer)
against cases whose answer is known and a slow one-record-at-a-time float64 reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from evaluation.paired import correctness, fmt_diff, paired_diff
from evaluation.transfer import transfer_metrics
from pipeline.constants import IGNORE_INDEX
from pipeline.models import MobileVLM, preprocess_image
from pipeline.templates import encode_conversation
from tests.pipeline.data_fixtures import make_tokenizer, qa
from toy_world.presets import toy_student_config, toy_teacher_config


def test_paired_diff_known_cases():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, 300)
    same = paired_diff(a, a)
    assert same["diff"] == same["lo"] == same["hi"] == 0.0  # identical answers: no difference, no spread
    full = paired_diff(np.ones(50), np.zeros(50))
    assert (full["diff"], full["lo"], full["hi"]) == (1.0, 1.0, 1.0)
    # b = a with 30 of 300 wrong answers fixed: +10 points, an interval that excludes 0
    b = a.copy()
    b[np.flatnonzero(a == 0)[:30]] = 1
    r = paired_diff(b, a)
    assert r["diff"] == pytest.approx(0.1) and 0 < r["lo"] < 0.1 < r["hi"] < 0.2
    # pairing: two models that share every error but 6 are resolved; the unpaired std is far larger
    assert r["hi"] - r["lo"] < 2 * 1.96 * np.sqrt(2 * 0.25 / 300)
    assert fmt_diff(r).startswith("+10.0 [")


def test_paired_diff_over_seeds_and_questions():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2, (3, 200)).astype(float)
    better = base.copy()
    better[:, :20] = 1.0  # a seed-consistent gain on the same questions
    r = paired_diff(better, base)
    assert r["n_runs"] == 3 and r["n_questions"] == 200
    assert r["diff"] == pytest.approx((better - base).mean()) and r["lo"] > 0
    with pytest.raises(ValueError, match="same questions"):
        paired_diff(base, base[:, :100])


def test_correctness_orders_by_question_and_refuses_other_sets():
    preds = [{"question_id": "b", "correct": True}, {"question_id": "a", "correct": False}]
    ids, v = correctness(preds)
    assert ids == ["a", "b"] and v.tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="different questions"):
        correctness(preds, ["a", "c"])


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Any:
    return AutoTokenizer.from_pretrained(str(make_tokenizer(tmp_path_factory.mktemp("tok"))))


def _records(root: Path) -> list[dict]:
    rng = np.random.default_rng(0)
    recs = []
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"im{i}.png")
        recs.append(qa(i, f"im{i}.png", [("What colour is the square?", "red" if i % 2 else "blue")]))
    return recs


def test_transfer_metrics_equal_a_slow_reference(toy_vision_dir, tok, tmp_path):
    torch.manual_seed(0)
    student = MobileVLM(toy_student_config(len(tok), toy_vision_dir, grid=2)).eval()
    teacher = MobileVLM(toy_teacher_config(len(tok), toy_vision_dir, grid=2)).eval()
    recs = _records(tmp_path)
    got = transfer_metrics(student, teacher, tok, recs, tmp_path, batch_size=2)
    # slow reference: one record at a time, float64, attention from eager-free captured maps of
    # each model alone (head mean), answer positions from the encoded labels
    kl, n, s_all, t_all = 0.0, 0, [], []
    for r in recs:
        enc = encode_conversation(r["conversations"], "v1", tok, True)
        ids = torch.tensor([enc.input_ids])
        lab = torch.tensor([enc.labels])
        with Image.open(tmp_path / r["image"]) as im:
            px = preprocess_image(im.convert("RGB"), student.config)[None]
        with torch.no_grad():
            so = student.forward_align(input_ids=ids, images=px, labels=lab)
            to = teacher.forward_align(input_ids=ids, images=px, labels=lab)
        for t in range(so.labels.shape[1] - 1):
            if so.labels[0, t + 1] == IGNORE_INDEX:
                continue
            q = torch.softmax(so.logits[0, t].double(), -1)
            p = torch.softmax(to.logits[0, t].double(), -1)
            kl += float((q * (q.log() - p.log())).sum())
            n += 1
        s_all.append(so.attn[("first", "tv")][0].double().mean(0).flatten())
        t_all.append(to.attn[("first", "tv")][0].double().mean(0).flatten())
    a, b = torch.cat(s_all), torch.cat(t_all)
    assert got["n_answer_tokens"] == n and got["rkl"] == pytest.approx(kl / n, abs=2e-4)
    assert got["attn_mse"] == pytest.approx(float(((a - b) ** 2).mean()), rel=1e-4)
    assert got["attn_corr"] == pytest.approx(float(np.corrcoef(a.numpy(), b.numpy())[0, 1]), abs=1e-4)
    same = transfer_metrics(teacher, teacher, tok, recs, tmp_path, batch_size=3)
    assert same["rkl"] == pytest.approx(0.0, abs=1e-6) and same["attn_corr"] == pytest.approx(1.0) and same["attn_mse"] == 0.0
