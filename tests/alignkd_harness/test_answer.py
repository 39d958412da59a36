"""alignkd_harness without any harness installed: the requests a harness would send for the local
task (lmms_task.documents -> task_utils.doc_to_text / doc_to_visual -> answer.Answerer) get exactly
the answers and verdicts of `alignkd eval` (evaluation.heldout.evaluate) on a real tiny checkpoint;
requests the model cannot honour are refused by name; the task writer and the comparison tool.
The run through lmms-eval itself is tests/alignkd_harness/test_lmms_eval.py (opt-in)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from alignkd_harness.answer import Answerer, HarnessRequestError, Request, conversation, cut_at
from alignkd_harness.compare import compare
from alignkd_harness.compare import main as compare_main
from alignkd_harness.lmms_task import documents, write_task
from alignkd_harness.task_utils import doc_to_text, doc_to_visual, process_results
from evaluation.heldout import evaluate
from pipeline.models import MobileVLM
from pipeline.tokenizer_load import load_tokenizer
from tests.alignkd_harness.harness_fixtures import write_checkpoint, write_records
from tests.pipeline.data_fixtures import write_json, write_workflow

MAX_NEW = 6
GREEDY = {"max_new_tokens": MAX_NEW, "until": [], "do_sample": False, "temperature": 0, "num_beams": 1}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory, toy_vision_dir) -> tuple[Path, list[dict], Path]:
    root = tmp_path_factory.mktemp("harness")
    return write_checkpoint(root, toy_vision_dir), write_records(root), root / "img"


@pytest.fixture(scope="module")
def answerer(world) -> Answerer:
    return Answerer(world[0], batch_size=3, max_new_tokens=16, device="cpu")


def _requests(docs: list[dict], gen: dict) -> list[Request]:
    return [Request(doc_to_text(d), doc_to_visual(d), dict(gen), f"t/test/{i}") for i, d in enumerate(docs)]


def test_harness_requests_get_the_answers_and_verdicts_of_alignkd_eval(world, answerer):
    ck, recs, root = world
    model, tok = MobileVLM.from_pretrained(ck), load_tokenizer(ck)
    first = evaluate(model, tok, recs, root, "v1", batch_size=3, max_new_tokens=MAX_NEW, progress=False)
    assert len({p.prediction for p in first}) >= 3  # the random model does not answer everything alike
    # three questions get their prediction as the reference answer (in another case, with a full
    # stop), so that the verdicts are a mix that normalisation decides
    for i in (0, 4, 5):
        recs = [dict(r) for r in recs]
        recs[i]["answer"] = first[i].prediction.upper() + "."
    ours = evaluate(model, tok, recs, root, "v1", batch_size=3, max_new_tokens=MAX_NEW, progress=False)
    assert [p.correct for p in ours].count(True) >= 3

    docs = documents(recs, root, "eval.json")
    assert [d["image"] == "" for d in docs] == [not r.get("image") for r in recs]
    texts = answerer.answer(_requests(docs, GREEDY), progress=False)
    assert texts == [p.prediction for p in ours]
    verdicts = [process_results(d, [t]) for d, t in zip(docs, texts)]
    assert [v["exact_match"] for v in verdicts] == [float(p.correct) for p in ours]
    assert all(v[f"exact_match_{d['task']}"] == v["exact_match"] for d, v in zip(docs, verdicts))


def test_requests_are_answered_in_order_across_generation_settings(world, answerer):
    """Requests with other max_new_tokens form their own group (one generate_answers call each):
    interleaved, each group gets what it gets alone, back in the requests' order."""
    ck, recs, root = world
    mixed = _requests(documents(recs, root, "eval.json"), GREEDY)
    for r in mixed[1::2]:
        r.gen_kwargs["max_new_tokens"] = 1
    got = answerer.answer(mixed, progress=False)
    assert got[0::2] == answerer.answer(mixed[0::2], progress=False)
    assert got[1::2] == answerer.answer(mixed[1::2], progress=False)
    assert got[0::2] != got[1::2]


def test_a_request_the_model_cannot_honour_is_refused_by_name(answerer):
    with pytest.raises(HarnessRequestError, match="mme/test/7: asks for sampling"):
        answerer.answer([Request("q", [], {"do_sample": True, "temperature": 0.7}, "mme/test/7")])
    with pytest.raises(HarnessRequestError, match="b/test/1: 2 images"):
        answerer.answer([Request("q", ["a", "b"], {}, "b/test/1")])
    with pytest.raises(HarnessRequestError, match="c/test/2: the context has <image> but"):
        conversation(Request("<image>\nq", [], {}, "c/test/2"))


def test_the_context_becomes_one_human_turn_and_stop_strings_cut_the_answer():
    assert conversation(Request("What is it?", ["img"])) == [{"from": "human", "value": "<image>\nWhat is it?"}]
    assert conversation(Request("What is it?\n<image>", ["img"]))[0]["value"] == "What is it?\n<image>"
    assert conversation(Request("What is it?", [])) == [{"from": "human", "value": "What is it?"}]
    assert cut_at(" yes\n\nUSER: more", ["\n\n"]) == "yes"
    assert cut_at("yes.", []) == "yes."


def test_the_task_writer_writes_the_eval_split_as_flat_documents_and_refuses_multi_turn(tmp_path, world):
    ck, recs, root = world
    data = write_json(tmp_path / "eval.json", recs)
    wf = write_workflow(tmp_path / "wf.yaml", [], ck, tmp_path,
                        eval={"name": "ev", "json": str(data), "image_root": str(root), "template": "v1",
                              "stage": "finetune"})
    y = write_task(wf, tmp_path / "task", limit=5)
    cfg = yaml.load(y.read_text().replace("!function", ""), Loader=yaml.SafeLoader)
    assert cfg["task"] == y.stem == "alignkd_test_eval" and cfg["output_type"] == "generate_until"
    assert cfg["generation_kwargs"]["until"] == [] and cfg["generation_kwargs"]["do_sample"] is False
    assert {m["metric"] for m in cfg["metric_list"]} == {"exact_match", "exact_match_colour", "exact_match_count",
                                                         "exact_match_position"}
    docs = [json.loads(x) for x in (tmp_path / "task" / "docs.jsonl").read_text().splitlines()]
    assert [d["id"] for d in docs] == ["q0", "q1", "q2", "q3", "q4"]
    assert docs[0]["question"] == recs[0]["conversations"][0]["value"] and Path(docs[0]["image"]).is_absolute()
    assert "alignkd_harness.task_utils" in (tmp_path / "task" / "utils.py").read_text()

    two = [{**recs[0], "id": "multi", "conversations": recs[0]["conversations"] * 2}]
    with pytest.raises(ValueError, match="record multi: .* this record has 4 turns"):
        documents(two, root, "eval.json")


def test_compare_counts_questions_that_differ(tmp_path):
    docs = [{"id": "a"}, {"id": "b"}]
    preds = [{"question_id": "a", "prediction": "red", "correct": True},
             {"question_id": "b", "prediction": "two", "correct": False}]
    same = [{"doc_id": 1, "filtered_resps": ["two"], "exact_match": 0.0},
            {"doc_id": 0, "filtered_resps": ["red"], "exact_match": 1.0}]
    r = compare(docs, same, preds)
    assert (r["n"], r["same_answer"], r["same_verdict"], r["harness_em"], r["alignkd_em"]) == (2, 2, 2, 0.5, 0.5)
    other = [dict(same[0], filtered_resps=["three"]), same[1]]
    r = compare(docs, other, preds)
    assert r["same_answer"] == 1 and r["differ"] == [{"id": "b", "harness": "three", "alignkd": "two"}]

    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "out" / "m").mkdir(parents=True)
    (tmp_path / "out" / "m" / "x_samples_t.jsonl").write_text("".join(json.dumps(s) + "\n" for s in other))
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    args = ["--task-dir", str(tmp_path / "task"), "--samples", str(tmp_path / "out"),
            "--predictions", str(tmp_path / "p.jsonl")]
    assert compare_main(args) == 1
    (tmp_path / "out" / "m" / "x_samples_t.jsonl").write_text("".join(json.dumps(s) + "\n" for s in same))
    assert compare_main(args) == 0
