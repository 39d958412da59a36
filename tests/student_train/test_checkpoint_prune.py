"""train.keep_checkpoints: only the newest DeepSpeed checkpoints of a stage stay on disk (a ZeRO-2
checkpoint of a real-width 2-layer slice is ~5 GB; none was ever pruned)."""

from pathlib import Path

import pytest

from pipeline.workflow import WorkflowError, load_workflow
from student_train.checkpoint import prune


def _tags(d: Path, steps, latest: int) -> None:
    for s in steps:
        (d / f"step{s}").mkdir(parents=True)
        (d / f"step{s}" / "mp_rank_00_model_states.pt").write_bytes(b"x" * 10)
    (d / "latest").write_text(f"step{latest}")


def test_prune_keeps_the_newest_by_step_number_and_the_latest(tmp_path):
    _tags(tmp_path, [2, 10, 4, 8], latest=10)
    (tmp_path / "stepx").mkdir()  # not ours: left alone
    assert sorted(prune(tmp_path, 2)) == ["step2", "step4"]  # by number, not by name (step10 < step2 as text)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["step10", "step8", "stepx"]
    assert prune(tmp_path, 0) == [] and prune(tmp_path / "none", 1) == []


def test_prune_never_deletes_the_tag_latest_names(tmp_path):
    # `latest` still names an older tag (a kill between a save and its `latest`): it must survive
    _tags(tmp_path, [1, 2, 3], latest=1)
    assert prune(tmp_path, 1) == ["step2"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["step1", "step3"]


def test_a_negative_count_is_refused_at_load(tmp_path):
    p = tmp_path / "wf.yaml"
    p.write_text("train: {keep_checkpoints: -1, save_every: -5}\n")
    with pytest.raises(WorkflowError) as err:
        load_workflow(p)
    assert "train.keep_checkpoints: must be 0 or more, got -1" in str(err.value)
    assert "train.save_every: must be 0 or more, got -5" in str(err.value)
