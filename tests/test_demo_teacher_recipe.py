"""`alignkd demo` / `reproduce` reuse a finished toy teacher only if it was trained with the
workflow's `demo.teacher_*` settings: a changed budget must not silently keep the old teacher."""

import json
from pathlib import Path

from alignkd.demo_cmd import TEACHER_RECIPE, check_teacher_recipe, teacher_recipe
from pipeline.workflow import load_workflow, with_overrides

REPO = Path(__file__).resolve().parents[1]


def test_a_teacher_of_other_settings_is_named_not_reused(tmp_path):
    wf = load_workflow(REPO / "workflows/toy.yaml")
    recipe = teacher_recipe(wf)
    assert recipe["teacher_finetune_steps"] == wf.demo.teacher_finetune_steps and recipe["init"].endswith("teacher_init")
    teacher = tmp_path / "run" / "teacher"
    teacher.mkdir(parents=True)
    (teacher / "config.json").write_text("{}")

    problem = check_teacher_recipe(teacher, recipe)  # an earlier alignkd's teacher: settings unknown
    assert problem and TEACHER_RECIPE in problem and "--fresh" in problem and str(teacher.parent) in problem

    (teacher / TEACHER_RECIPE).write_text(json.dumps(recipe))
    assert check_teacher_recipe(teacher, recipe) is None  # the same settings: reused

    longer = teacher_recipe(with_overrides(wf, {"demo.teacher_finetune_steps": 600}))
    problem = check_teacher_recipe(teacher, longer)
    assert problem and f"teacher_finetune_steps {wf.demo.teacher_finetune_steps} -> 600" in problem

    (teacher / TEACHER_RECIPE).write_text("{not json")
    assert "unreadable" in check_teacher_recipe(teacher, recipe)
