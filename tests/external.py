"""What an `external` test (tests/conftest.py) needs from its environment."""

import os

import pytest


def external_env(var: str, what: str) -> str:
    """The value of `var`; an `external` test runs only when selected on purpose (`-m external`), so a
    missing variable fails it rather than skipping it."""
    value = os.environ.get(var)
    if not value:
        pytest.fail(f"{var} is not set: this `external` test needs {what}")
    return value
