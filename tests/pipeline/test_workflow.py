"""The workflow loader is strict: unknown keys and wrong types are errors, all listed at once."""

from pathlib import Path

import pytest

from pipeline.workflow import Workflow, WorkflowError, load_workflow

REPO = Path(__file__).resolve().parents[2]


def test_toy_workflow_loads_into_typed_sections():
    wf = load_workflow(REPO / "workflows/toy.yaml")
    assert isinstance(wf, Workflow)
    assert wf.data.datasets and all(d.template in ("plain", "v1") for d in wf.data.datasets)
    assert wf.subset_limit("short") < wf.subset_limit("long")
    assert wf.cache_path("short").name == "short.zarr"


def test_every_problem_is_reported_at_once(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nbogus: 1\ncache:\n  logits_topk: many\n  focus_kk: 3\ndump:\n  workers: 1.5\n")
    with pytest.raises(WorkflowError) as err:
        load_workflow(p)
    msg = str(err.value)
    for needle in ("bogus: unknown key", "cache.logits_topk: expected int", "cache.focus_kk: unknown key", "dump.workers: expected int"):
        assert needle in msg, msg


def test_int_is_accepted_for_float_and_lists_are_checked(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("train:\n  pretrain:\n    lr: 1\n  finetune:\n    datasets: [a, 3]\n")
    with pytest.raises(WorkflowError, match=r"train.finetune.datasets\[1\]: expected str"):
        load_workflow(p)
    p.write_text("train:\n  pretrain:\n    lr: 1\n")
    assert load_workflow(p).train.pretrain.lr == 1.0


def test_missing_file_and_unknown_subset_are_clear(tmp_path):
    with pytest.raises(WorkflowError, match="workflow file not found"):
        load_workflow(tmp_path / "nope.yaml")
    wf = load_workflow(REPO / "workflows/toy.yaml")
    with pytest.raises(WorkflowError, match="unknown subset 'medium'"):
        wf.subset_limit("medium")


def test_vars_name_paths_once_and_undefined_ones_are_errors(tmp_path):
    p = tmp_path / "vars.yaml"
    p.write_text("vars: {root: /data/x}\nmodels:\n  teacher: ${root}/teacher\n  student: ${nope}/s\n")
    with pytest.raises(WorkflowError, match=r"models.student: \$\{nope\} is not defined in vars"):
        load_workflow(p)
    p.write_text("vars: {root: /data/x}\nmodels:\n  teacher: ${root}/teacher\n")
    assert load_workflow(p).models.teacher == "/data/x/teacher"


@pytest.mark.parametrize("name", ["mobilevlm_v2.yaml", "toy.yaml"])
def test_shipped_workflows_load(name):
    load_workflow(REPO / "workflows" / name)


def test_deepspeed_json_beside_the_workflow_is_found_from_another_directory(tmp_path, monkeypatch):
    (tmp_path / "wfs").mkdir()
    (tmp_path / "wfs" / "zero2.json").write_text("{}")
    yml = tmp_path / "wfs" / "w.yaml"
    yml.write_text("train:\n  deepspeed_config: workflows/zero2.json\n")
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_workflow(yml).train.deepspeed_config == str(tmp_path / "wfs" / "zero2.json")
    (elsewhere / "workflows").mkdir()  # a file at the relative path itself wins
    (elsewhere / "workflows" / "zero2.json").write_text("{}")
    assert load_workflow(yml).train.deepspeed_config == "workflows/zero2.json"


def test_the_grounded_toy_workflow_differs_from_toy_only_in_packing_subsets_paths_and_teacher_budget():
    from dataclasses import asdict

    toy, grounded = load_workflow(REPO / "workflows/toy.yaml"), load_workflow(REPO / "workflows/toy_grounded.yaml")
    swap = lambda d: {k: (v.replace("runs/toy_grounded", "runs/toy") if isinstance(v, str) else v) for k, v in d.items()}  # noqa: E731
    for section in ("dump", "models", "cache", "train"):  # same recipe, same models, same cache layout
        assert swap(asdict(getattr(grounded, section))) == asdict(getattr(toy, section)), section
    g, t = asdict(grounded.world), asdict(toy.world)
    assert {k for k in g if g[k] != t[k]} == {"dir", "multi_fraction", "multi_turns"}
    assert grounded.world.multi_fraction > toy.world.multi_fraction and grounded.world.multi_turns > toy.world.multi_turns
    assert grounded.demo.teacher_finetune_steps > toy.demo.teacher_finetune_steps
    assert grounded.demo.student_subset == toy.demo.student_subset  # the students' budget is the same
