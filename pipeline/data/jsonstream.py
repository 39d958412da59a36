"""Stream the elements of a top-level JSON array without loading the file: the real pre-training
JSON is 1.5 GB, and `json.load` would hold it several times over as Python objects.

Text is decoded as UTF-8 with `surrogateescape`, so undecodable bytes inside a record become lone
surrogates that the record checks reject ("non_utf8") instead of the whole file failing.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.data import ManifestError

_WS = re.compile(r"[ \t\n\r]*")
CHUNK_CHARS = 1 << 20
MAX_RECORD_CHARS = 64 << 20  # a record this long is malformed, not merely big


class _Buffer:
    """A sliding window over the file: `text[pos:]` is what is not consumed yet."""

    def __init__(self, f: Any, chunk: int):
        self.f, self.chunk = f, chunk
        self.text, self.pos, self.eof = "", 0, False

    def fill(self) -> bool:
        """Append the next chunk (dropping the consumed prefix); False at end of file."""
        more = self.f.read(self.chunk)
        if not more:
            self.eof = True
            return False
        self.text, self.pos = self.text[self.pos :] + more, 0
        return True

    def skip_ws(self) -> str:
        """Skip whitespace; return the next character ("" at end of file)."""
        while True:
            self.pos = _WS.match(self.text, self.pos).end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.fill():
                return ""


def iter_json_array(path: str | Path, chunk_chars: int = CHUNK_CHARS) -> Iterator[tuple[int, Any]]:
    """Yield (index, element) of the JSON array in `path`, one element at a time.

    Raises ManifestError (naming the file and the element) when the file is
    missing, is not a JSON array, or breaks JSON syntax (e.g. truncated): those make the whole
    file unreadable from that point on."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: dataset JSON not found (check data.datasets[].json in the workflow)")
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        buf = _Buffer(f, chunk_chars)
        first = buf.skip_ws()
        if first == "\ufeff":  # a UTF-8 byte-order mark
            buf.pos += 1
            first = buf.skip_ws()
        if first != "[":
            raise ManifestError(f"{path}: not a JSON list (starts with {buf.text[buf.pos:buf.pos + 30]!r}); "
                                "expected a LLaVA-format array of records")
        buf.pos += 1
        index = 0
        if buf.skip_ws() == "]":
            buf.pos += 1
        else:
            while True:
                buf.skip_ws()  # raw_decode does not skip leading whitespace
                obj, end = _decode_one(decoder, buf, path, index)
                buf.pos = end
                yield index, obj
                index += 1
                c = buf.skip_ws()
                if c == ",":
                    buf.pos += 1
                    continue
                if c == "]":
                    buf.pos += 1
                    break
                what = "the file ends" if c == "" else f"found {buf.text[buf.pos:buf.pos + 30]!r}"
                raise ManifestError(f"{path}: after element {index - 1} expected ',' or ']' but {what} "
                                    "(truncated or not valid JSON)")
        if buf.skip_ws() != "":
            raise ManifestError(f"{path}: data after the closing ']': {buf.text[buf.pos:buf.pos + 30]!r}")


def _decode_one(decoder: json.JSONDecoder, buf: _Buffer, path: Path, index: int) -> tuple[Any, int]:
    """Decode the element at buf.pos, reading more of the file while it may be incomplete."""
    while True:
        try:
            obj, end = decoder.raw_decode(buf.text, buf.pos)
        except RecursionError:  # ~1,000 nested brackets exhaust the decoder's stack: no record is like that
            raise ManifestError(f"{path}: element {index} is nested too deeply to parse (over ~{sys.getrecursionlimit()} "
                                "levels of [ or {); fix or drop that record") from None
        except json.JSONDecodeError as exc:
            if len(buf.text) - buf.pos > MAX_RECORD_CHARS or not buf.fill():
                raise ManifestError(f"{path}: element {index} is not valid JSON ({exc.msg}; "
                                    f"near {buf.text[exc.pos:exc.pos + 30]!r})") from None
            continue
        # A number cut by the end of the buffer parses as a shorter number ("-0" of "-0.25"):
        # when one ends at, or next to a character that could continue it, read on and re-parse.
        if not buf.eof and (end == len(buf.text) or _is_number(obj) and buf.text[end] in _NUMBER_CHARS) and buf.fill():
            continue
        return obj, end


_NUMBER_CHARS = frozenset("0123456789.eE+-")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
