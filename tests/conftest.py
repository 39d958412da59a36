"""Small fixtures shared by every test package."""

import os
import random
import subprocess

import numpy as np
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """`external` tests need software outside the test install (a venv named by an environment
    variable) or more time and disk than the suite affords (the real-width slice); every run
    deselects them unless its -m expression names `external` (`pytest -m external`).
    A hook, not `addopts = -m "not external"`: any other -m on the command line (`-m slow`,
    `make test-fast`) would replace that one and select them again."""
    if "external" in (config.getoption("markexpr") or ""):
        return
    keep = [i for i in items if i.get_closest_marker("external") is None]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("external") is not None])
        items[:] = keep


@pytest.fixture
def seed() -> int:
    """Fix every RNG (python, numpy, torch) at 0 for the test that asks for it."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    return 0


@pytest.fixture(scope="session")
def toy_vision_dir(tmp_path_factory) -> "object":
    """A directory holding the toy CLIP vision config (a local `mm_vision_tower`)."""
    from toy_world.presets import write_vision_tower

    return write_vision_tower(tmp_path_factory.mktemp("clip_toy"))


@pytest.fixture(scope="session")
def sp_model() -> bytes:
    """A SentencePiece model with LLaMA's settings and SP_VOCAB pieces (tests.pipeline.release_tokenizer),
    trained once per session: the vocabulary of every release-layout test directory."""
    pytest.importorskip("sentencepiece")  # an alignkd dependency; the skip only shows a broken install
    from tests.pipeline.release_tokenizer import SP_VOCAB, train_sentencepiece

    return train_sentencepiece(SP_VOCAB)


@pytest.fixture
def tiny_vlm(toy_vision_dir, seed):
    """The toy student (2 x 128, 4 heads, 64 vision tokens, vocab 100), fp32, seeded, eval mode."""
    from pipeline.models import MobileVLM
    from toy_world.presets import toy_student_config

    return MobileVLM(toy_student_config(100, toy_vision_dir)).eval()


@pytest.fixture
def tiny_fs(tmp_path):
    """A 256 kB tmpfs of its own (needs root and mount; skipped elsewhere): a real ENOSPC when
    filled, a real read-only filesystem when remounted `ro` (root ignores permission bits)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
