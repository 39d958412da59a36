"""The workflow loader is strict: unknown keys and wrong types are errors, all listed at once."""

import dataclasses
from pathlib import Path

import pytest

from pipeline.workflow import (
    Workflow,
    WorkflowError,
    load_workflow,
    with_overrides,
    workflow_from_dict,
    workflow_to_dict,
)

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


@pytest.mark.parametrize("name", ["mobilevlm_v2.yaml", "toy.yaml", "toy_dev.yaml", "toy_144.yaml"])
def test_shipped_workflows_load(name):
    wf = load_workflow(REPO / "workflows" / name)
    assert isinstance(wf, Workflow) and wf.models.teacher and wf.models.student and wf.cache.logits_topk > 0


def test_the_144_token_toy_differs_from_toy_only_in_vision_tokens_and_what_follows():
    """workflows/toy_144.yaml: the toy world at the released 12 x 12 grid (its exports run in the
    original MobileVLM code), otherwise the reported toy."""
    from toy_world.generate import WorldSpec

    toy, t144 = load_workflow(REPO / "workflows/toy.yaml"), load_workflow(REPO / "workflows/toy_144.yaml")
    assert t144.models.num_vision_tokens == 144 and WorldSpec.from_workflow(t144).projector_grid == 12
    assert {k: v + 128 for k, v in toy.data.subsets.items()} == t144.data.subsets  # same text room
    assert t144.world.seed == toy.world.seed and t144.world.n_finetune == toy.world.n_finetune
    assert t144.run_dir != toy.run_dir and t144.cache.focus_k == 16


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


def test_the_dev_workflow_differs_from_toy_only_in_seed_name_and_paths():
    """Settings are tuned on workflows/toy_dev.yaml and reported on workflows/toy.yaml: the two must
    be the same recipe on two worlds (issue 13: honest tuning)."""
    from dataclasses import asdict

    toy, dev = load_workflow(REPO / "workflows/toy.yaml"), load_workflow(REPO / "workflows/toy_dev.yaml")
    swap = lambda v: v.replace("runs/toy_dev", "runs/toy") if isinstance(v, str) else v

    def norm(x):
        if isinstance(x, dict):
            return {k: norm(v) for k, v in x.items() if k != "source"}
        if isinstance(x, list):
            return [norm(v) for v in x]
        return swap(x)

    a, b = norm(asdict(toy)), norm(asdict(dev))
    assert b["world"].pop("seed") == 1 and a["world"].pop("seed") == 0
    assert (a.pop("name"), b.pop("name")) == ("toy", "toy_dev")
    assert a == b


def test_fixed_choice_values_are_checked_at_load_all_at_once(tmp_path):
    # typos that used to load and fail later, one at a time (or never: fp8 ran as fp32)
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  mode: cachd\n  precision: fp8\n  loss: {preset: alignKD, attn_layers: last+first}\n"
                 "cache:\n  blocks: [tv, tvv]\ndata:\n  image_check: quick\n  datasets: [{name: a, template: v2}]\n"
                 "reproduce:\n  presets: [sft, bogus]\n")
    with pytest.raises(WorkflowError) as err:
        load_workflow(p)
    msg = str(err.value)
    for needle in ("train.mode: 'cachd' is not one of cached, online, sft",
                   "train.precision: 'fp8' is not one of fp32, fp16, bf16",
                   "train.loss.preset: 'alignKD' is not one of", "train.loss.attn_layers: 'last+first'",
                   "cache.blocks[1]: 'tvv'", "data.image_check: 'quick'", "data.datasets[0].template: 'v2'",
                   "reproduce.presets[1]: 'bogus'"):
        assert needle in msg, msg
    assert "8 problem(s)" in msg, msg
    # the cache's encodings and target sources are choices too
    p.write_text("cache:\n  attention: stord\n  projector_tokens: recomputed\n  attn_dtype: u9\n  compressor: zsdt\n")
    with pytest.raises(WorkflowError) as err:
        load_workflow(p)
    msg = str(err.value)
    for needle in ("cache.attention: 'stord' is not one of auto, recompute, stored", "cache.projector_tokens: 'recomputed'",
                   "cache.attn_dtype: 'u9' is not one of float32,", "cache.compressor: 'zsdt' is not one of none, zstd"):
        assert needle in msg, msg
    # a choice of the wrong type is refused too (YAML reads `mode: 1` as an int)
    p.write_text("train:\n  mode: 1\n")
    with pytest.raises(WorkflowError, match="train.mode: 1 is not one of"):
        load_workflow(p)


def test_workflow_presets_are_the_loss_presets():
    # pipeline (the core) may not import student_train, so the preset names are spelled twice;
    # this keeps them one list
    import typing

    from pipeline.workflow import Preset, TailModel
    from student_train.losses import PRESETS
    from student_train.losses.rkl import TAIL_MODELS

    assert set(typing.get_args(Preset)) == set(PRESETS)
    assert set(typing.get_args(TailModel)) == set(TAIL_MODELS)


def test_unset_paths_go_under_the_workflows_own_run_dir(tmp_path):
    # a workflow of another name used to write runs/toy/manifest.parquet (the toy's defaults)
    p = tmp_path / "mine.yaml"
    p.write_text("name: mine\n")
    wf = load_workflow(p)
    assert wf.run_dir == "runs/mine"
    assert (wf.data.manifest, wf.data.rejects, wf.cache.dir, wf.train.out_dir, wf.world.dir, wf.models.teacher,
            wf.models.student) == ("runs/mine/manifest.parquet", "runs/mine/manifest.rejects.jsonl", "runs/mine/cache",
                                   "runs/mine/student", "runs/mine/world", "runs/mine/teacher",
                                   "runs/mine/world/student_init")
    p.write_text(f"name: mine\nrun_dir: {tmp_path}/out\ndata: {{manifest: /data/m.parquet}}\nworld: {{dir: /w}}\n")
    wf = load_workflow(p)
    assert wf.data.manifest == "/data/m.parquet" and wf.cache.dir == f"{tmp_path}/out/cache"  # set ones are kept
    assert wf.models.student == "/w/student_init"
    p.write_text("train: {seed: 1}\n")  # no name: the toy's paths, as before
    assert load_workflow(p).data.manifest == "runs/toy/manifest.parquet"


# ------------------------------------------------------------------- frozen, overridden in one place
def test_a_loaded_workflow_cannot_be_changed_in_place():
    wf = load_workflow(REPO / "workflows/toy.yaml")
    for section, key, value in (("models", "student", "elsewhere"), ("train", "mode", "online"), ("cache", "dir", "x")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(getattr(wf, section), key, value)
    with pytest.raises(dataclasses.FrozenInstanceError):
        wf.train.finetune.lr = 7e-4
    with pytest.raises(dataclasses.FrozenInstanceError):
        wf.source = "other.yaml"


def test_an_override_is_applied_to_a_copy_and_the_rest_is_kept():
    wf = load_workflow(REPO / "workflows/toy.yaml")
    got = with_overrides(wf, {"train.finetune.lr": 7e-4, "models.student": "ckpt", "train.loss.preset": "sft",
                              "train.seed": 3, "train.pretrain.max_steps": 5, "cache.layers": ["first", "last"]})
    assert (got.train.finetune.lr, got.models.student, got.train.loss.preset) == (7e-4, "ckpt", "sft")
    assert (got.train.seed, got.train.pretrain.max_steps, got.cache.layers) == (3, 5, ["first", "last"])
    assert got.train.pretrain.lr == wf.train.pretrain.lr and got.data == wf.data and got.source == wf.source
    assert (wf.train.finetune.lr, wf.models.student, wf.train.loss.preset) != (7e-4, "ckpt", "sft")  # the original stays
    assert with_overrides(wf, {"train.finetune.lr": 1}).train.finetune.lr == 1.0  # int for float, as at load
    assert with_overrides(wf, {}) == wf


def test_bad_overrides_are_refused_all_at_once_naming_key_and_allowed_values():
    wf = load_workflow(REPO / "workflows/toy.yaml")
    with pytest.raises(WorkflowError) as err:
        with_overrides(wf, {"train.finetune.lrr": 1e-3, "train.mode": "cachd", "train.loss.preset": "alignkdd",
                            "train.seed": "3", "models.student.path": "x", "bogus": 1,
                            "data.datasets": [{"name": "d", "template": "llama_2"}]})
    msg = str(err.value)
    for needle in ("7 problem(s)", "train.finetune.lrr: unknown key", "lr, max_steps",
                   "train.mode: 'cachd' is not one of cached, online, sft",
                   "train.loss.preset: 'alignkdd' is not one of sft, rkl, attn, focus, all, alignkd",
                   "train.seed: expected int, got str", "models.student.path: models.student is a value",
                   "bogus: unknown key", "data.datasets[0].template: 'llama_2' is not one of plain, v1"):
        assert needle in msg, msg


def test_a_workflow_round_trips_through_plain_data(tmp_path):
    import json

    wf = with_overrides(load_workflow(REPO / "workflows/toy.yaml"), {"train.finetune.lr": 7e-4, "data.eval": None})
    assert workflow_from_dict(json.loads(json.dumps(workflow_to_dict(wf))), "run.json") == wf
    with pytest.raises(WorkflowError, match="run.json: 1 problem"):
        workflow_from_dict({**workflow_to_dict(wf), "trian": {}}, "run.json")
