"""The arguments `alignkd student-train` hands every rank survive the trip through argv."""

from student_train.launch import RunArgs


def test_run_args_round_trip_through_argv_keeps_types():
    a = RunArgs(workflow="w.yaml", subset="long", stage="pretrain", init="ckpt", out="o", mode="sft",
                resume=True, max_steps=7, lr=5e-4, projector_lr=2.5e-3, seed=3)
    b = RunArgs.parse(a.to_argv())
    assert b == a
    assert isinstance(b.lr, float) and isinstance(b.max_steps, int)


def test_unset_overrides_stay_unset():
    b = RunArgs.parse(RunArgs(workflow="w", subset="short", stage="finetune", init="i", out="o").to_argv())
    assert b.lr is None and b.projector_lr is None and b.max_steps is None and b.resume is False
