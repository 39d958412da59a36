"""The streaming JSON-array reader behind the manifest builder: same elements as json.load at any
chunk size, file-level errors name the file, undecodable bytes stay inside their record."""

from __future__ import annotations

import json

import pytest

from pipeline.data import ManifestError
from pipeline.data.jsonstream import iter_json_array


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_elements_equal_json_load_at_any_chunk_size(tmp_path, chunk):
    elements = [{"id": str(i), "v": "x" * (i % 5), "n": [i, i * 1.5]} for i in range(50)]
    elements += [123456789, -0.25, "s", None, [], {}, True]
    p = tmp_path / "a.json"
    p.write_text(json.dumps(elements, indent=1))
    got = list(iter_json_array(p, chunk_chars=chunk))
    assert [i for i, _ in got] == list(range(len(elements))) and [e for _, e in got] == elements


@pytest.mark.parametrize("text", ["[]", " \n[ ]\n", "\ufeff[]"])
def test_empty_arrays(tmp_path, text):
    p = tmp_path / "a.json"
    p.write_text(text, encoding="utf-8")
    assert list(iter_json_array(p, chunk_chars=2)) == []


@pytest.mark.parametrize("text, message", [
    ("", "not a JSON list"), ('{"id": 1}', "not a JSON list"), ("[1, 2", "the file ends"),
    ("[1 2]", "expected ',' or ']'"), ("[1,]", "element 1 is not valid JSON"), ("[1] [2]", "after the closing"),
    ('[{"id": "a"}, {"id": ', "element 1 is not valid JSON"),
])
def test_file_level_errors_name_the_file(tmp_path, text, message):
    p = tmp_path / "a.json"
    p.write_text(text)
    with pytest.raises(ManifestError, match=message) as exc:
        list(iter_json_array(p, chunk_chars=3))
    assert str(p) in str(exc.value)


def test_missing_file(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        list(iter_json_array(tmp_path / "nope.json"))


def test_undecodable_bytes_become_surrogates_in_their_record(tmp_path):
    p = tmp_path / "a.json"
    p.write_bytes(b'[{"v": "caf\xe9"}, {"v": "ok"}]')
    got = [e for _, e in iter_json_array(p)]
    assert got[1] == {"v": "ok"} and got[0]["v"] == "caf\udce9"  # the template rejects it as non_utf8
