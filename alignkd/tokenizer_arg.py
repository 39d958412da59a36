"""The tokenizer of a command-line option, or a one-line error naming the directory and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def cli_tokenizer(directory: str | Path, option: str = "--tokenizer") -> Any:
    """pipeline.tokenizer_load.load_tokenizer, with its TokenizerLoadError as a usage error."""
    from pipeline.tokenizer_load import TokenizerLoadError, load_tokenizer

    try:
        return load_tokenizer(directory)
    except TokenizerLoadError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None
