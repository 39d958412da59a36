"""Fixtures of the cache_schema tests. The helpers live in cache_schema_testlib.py, put on sys.path
here so that spawned writer processes can import them too."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cache_schema_testlib import make_prov


@pytest.fixture
def prov():
    return make_prov()
