"""Causes outside the program end in one line `error: ...` (exit 1), not a traceback (issue 15
item 6): a missing or garbled index, a missing file, a full disk at finalize, JSON nested too
deep. `--debug` / ALIGNKD_DEBUG=1 keeps the traceback. The console script itself is run once."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from cache_schema_testlib import make_prov, write_unit
from test_reliability import _fill

from alignkd.cli import app
from alignkd.errors import user_message
from cache_schema import CacheReader, CacheStore, NotFinalizedError, verify_store
from pipeline.data import ManifestError
from pipeline.data.jsonstream import iter_json_array

REPO = Path(__file__).resolve().parents[2]
IDS = ["a/0", "a/1", "a/2"]


@pytest.fixture
def store(tmp_path):
    s = CacheStore.create_or_open(tmp_path / "c", make_prov())
    write_unit(s, "u0", IDS, seed=0)
    s.finalize(IDS)
    return tmp_path / "c"


def _cli(capsys, *args) -> tuple[int, str]:
    """Run the console-script entry (alignkd.cli:app) in-process: (exit code, stderr)."""
    with pytest.raises(SystemExit) as ex:
        app([str(a) for a in args], prog_name="alignkd")
    return ex.value.code, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_garbled_index_is_a_fault_in_verify_and_one_line_in_show(store, capsys):
    (store / "index" / "finalized.json").write_text('{"units": [')  # torn by a kill mid-write
    rep = verify_store(store)
    assert not rep.ok and any("finalized.json" in f and "re-run finalize" in f for f in rep.faults), rep.faults
    code, err = _cli(capsys, "cache", "show", store, "a/0")
    assert code == 1 and "finalized.json" in _one_error_line(err)


def test_missing_index_file_is_one_line(store, capsys):
    (store / "index" / "samples.arrow").unlink()
    with pytest.raises(NotFinalizedError, match="samples.arrow"):
        CacheReader(store)
    code, err = _cli(capsys, "cache", "show", store, "a/0")
    assert code == 1 and "samples.arrow" in _one_error_line(err)
    code, _ = _cli(capsys, "cache", "verify", store)
    assert code == 1


def test_missing_manifest_file_is_one_line_and_debug_keeps_the_traceback(store, capsys, monkeypatch, tmp_path):
    gone = tmp_path / "gone.parquet"
    code, err = _cli(capsys, "cache", "verify", store, "--manifest", gone)
    line = _one_error_line(err)
    assert code == 1 and str(gone) in line and "not found: build it with `alignkd data build`" in line, line
    monkeypatch.setenv("ALIGNKD_DEBUG", "0")  # the callback sets it; monkeypatch restores it
    from pipeline.data.contract import ManifestFormatError

    with pytest.raises(ManifestFormatError):
        app(["--debug", "cache", "verify", str(store), "--manifest", str(gone)], prog_name="alignkd")


def test_full_disk_at_finalize_is_one_line_and_leaves_no_temp_file(tiny_fs):
    s = CacheStore.create_or_open(tiny_fs / "c", make_prov())
    write_unit(s, "u0", IDS, seed=0)
    filler = _fill(tiny_fs)
    with pytest.raises(OSError) as err:
        s.finalize(IDS)
    assert err.value.errno == errno.ENOSPC
    msg = user_message(err.value)
    assert msg is not None and "\n" not in msg and "disk is full" in msg, msg
    assert [p.name for p in (tiny_fs / "c" / "index").iterdir() if p.name.endswith(".tmp")] == []
    filler.unlink()
    assert s.finalize(IDS).n_samples == 3  # the re-run finishes


def test_json_nested_too_deep_names_the_file(tmp_path):
    p = tmp_path / "deep.json"
    p.write_text('[{"id": "ok"}, {"conversations": ' + "[" * 5000 + "]" * 5000 + "}]")
    with pytest.raises(ManifestError) as err:
        list(iter_json_array(p))
    assert str(p) in str(err.value) and "element 1" in str(err.value) and "nested too deeply" in str(err.value)
    assert user_message(err.value) == str(err.value)


def test_console_script_prints_one_line_and_debug_env_shows_the_traceback(store, tmp_path):
    script = REPO / ".venv" / "bin" / "alignkd"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("ALIGNKD_DEBUG", None)
    args = [str(script), "cache", "verify", str(store), "--manifest", str(tmp_path / "gone.parquet")]
    r = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert r.returncode == 1 and "gone.parquet" in _one_error_line(r.stderr)
    r = subprocess.run(args, capture_output=True, text=True, env=dict(env, ALIGNKD_DEBUG="1"), cwd=REPO, timeout=120)
    assert r.returncode == 1 and "Traceback" in r.stderr and "ManifestFormatError" in r.stderr
