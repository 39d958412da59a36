"""Fixtures shared by the held-out eval tests: tiny models on one thread, the test tokenizer."""

from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from tests.pipeline.data_fixtures import make_tokenizer


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """Tiny models: one intra-op thread is fastest, and far faster than several on a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Any:
    return AutoTokenizer.from_pretrained(str(make_tokenizer(tmp_path_factory.mktemp("tok"))))
