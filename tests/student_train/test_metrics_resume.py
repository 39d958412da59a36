"""A resumed run reads the interrupted run's metrics.jsonl: a kill tears at most its last line."""

from __future__ import annotations

import json

import pytest

from student_train.metrics import MetricsFileError, MetricsWriter, read_metrics


def _rows(n: int) -> str:
    return "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, n + 1))


def test_resume_drops_a_torn_last_line_with_one_warning(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text(_rows(3) + '{"step": 4, "loss": 0.2')  # rank 0 killed while appending step 4
    w = MetricsWriter(path, total_steps=5, start_step=3, enabled=True, desc="t")
    w.write({"step": 4, "loss": 0.25, "tokens_per_s": 1.0, "peak_mem_mb": 1.0})
    w.close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4]
    assert read_metrics(path)[-1]["loss"] == 0.25
    err = [ln for ln in capsys.readouterr().err.splitlines() if "torn" in ln]
    assert len(err) == 1 and str(path) in err[0]


def test_resume_refuses_a_corrupt_middle_line_naming_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = _rows(3).splitlines()
    lines[1] = lines[1][:-5]  # damaged, and not the last line: not what a kill does
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MetricsFileError, match=f"{path} line 2 is not a metrics row"):
        MetricsWriter(path, total_steps=5, start_step=3, enabled=True, desc="t")
    assert path.read_text() == "\n".join(lines) + "\n"  # left as it was, for the user to look at


def test_read_metrics_of_a_killed_run_leaves_the_torn_line_out(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(_rows(2) + '{"ste')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
