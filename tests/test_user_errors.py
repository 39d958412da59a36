"""alignkd.errors names the error classes whose messages reach the user as one line by dotted path
(so the CLI need not import every package): each name must still point at a real exception class,
or a moved module would silently turn its errors back into tracebacks."""

import importlib

import pytest

from alignkd.errors import USER_ERRORS


@pytest.mark.parametrize("dotted", sorted(USER_ERRORS))
def test_every_listed_user_error_is_a_real_exception_class(dotted):
    module, _, name = dotted.rpartition(".")
    cls = getattr(importlib.import_module(module), name, None)
    assert isinstance(cls, type) and issubclass(cls, Exception), f"{dotted} is not an exception class"
