"""Load a checkpoint's tokenizer, the one way every command does it (data build, dump and train
preflight, eval, probe, cache show).

    tok = load_tokenizer("checkpoints/MobileVLM_V2-7B")   # raises TokenizerLoadError, one line

Two layouts load: a converted `tokenizer.json` (what the toy world and our exports write), and a
SentencePiece `tokenizer.model` beside `tokenizer_config.json` / `special_tokens_map.json`, with no
tokenizer.json, which is how the MobileVLM V2 releases ship. transformers 5 converts a
tokenizer.model to its fast tokenizer only through the `sentencepiece` and `protobuf` packages;
without them it falls through to a tiktoken reader and says "`tiktoken` is required", which
sends users after the wrong package. So the packages are checked here first and the error names
them and the directory.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

VOCAB_FILES = ("tokenizer.json", "tokenizer.model")  # either one makes a directory a tokenizer
_SENTENCEPIECE_PACKAGES = (("sentencepiece", "sentencepiece>=0.2"), ("google.protobuf", "protobuf>=4"))


class TokenizerLoadError(ValueError):
    """A tokenizer directory that cannot be loaded; the message names the directory and the fix."""


def has_tokenizer(directory: str | Path) -> bool:
    """Whether `directory` holds a tokenizer (tokenizer.json or a SentencePiece tokenizer.model)."""
    d = Path(directory).expanduser()
    return any((d / name).is_file() for name in VOCAB_FILES)


def tokenizer_dir_for(model_dir: str | Path, fallback: str | Path) -> Path:
    """The tokenizer that goes with a checkpoint: its own when it ships one (in either format),
    else `fallback` (the workflow's data.tokenizer)."""
    return Path(model_dir) if has_tokenizer(model_dir) else Path(fallback)


def _missing_packages() -> list[str]:
    missing = []
    for module, requirement in _SENTENCEPIECE_PACKAGES:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing, or a module without a spec
            found = False
        if not found:
            missing.append(requirement)
    return missing


def _check_sentencepiece_model(model_file: Path) -> None:
    """transformers answers an unreadable tokenizer.model (truncated download, a git-lfs pointer)
    with the same tiktoken message; say what it is."""
    import sentencepiece

    try:
        sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    except (OSError, RuntimeError) as exc:
        raise TokenizerLoadError(f"{model_file}: not a readable SentencePiece model ({str(exc).strip()}): "
                                 f"download it again (a {model_file.stat().st_size}-byte file)") from None


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerBase:
    """The transformers tokenizer of `directory` (tokenizer.json, or tokenizer.model + its
    config files). Raises TokenizerLoadError naming the directory and what is missing."""
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise TokenizerLoadError(f"{d}: no tokenizer directory there")
    if not has_tokenizer(d):
        raise TokenizerLoadError(f"{d}: no tokenizer.json or tokenizer.model in this directory")
    if not (d / "tokenizer.json").is_file():
        missing = _missing_packages()
        if missing:
            quoted = " ".join(f"'{r}'" for r in missing)
            raise TokenizerLoadError(
                f"{d}: reading its tokenizer.model (a SentencePiece model, no tokenizer.json) needs the "
                f"{' and '.join(r.split('>')[0] for r in missing)} package{'s' if len(missing) > 1 else ''}: "
                f"pip install {quoted} (alignkd depends on them: reinstall it), or add a tokenizer.json")
        _check_sentencepiece_model(d / "tokenizer.model")
    from transformers import AutoTokenizer  # heavy: only when a tokenizer is needed

    try:
        tok = AutoTokenizer.from_pretrained(str(d))
    except Exception as exc:
        # tokenizer.json of a newer format: "data did not match any variant of untagged enum ...")
        raise TokenizerLoadError(f"{d}: cannot load the tokenizer: {exc}") from exc
    _encode_as_sentencepiece(tok)
    return tok


def _encode_as_sentencepiece(tok: PreTrainedTokenizerBase) -> None:
    """Make a SentencePiece-style tokenizer add the dummy "▁" prefix as SentencePiece does.

    transformers 5 builds every LLaMA tokenizer (from tokenizer.model, and from a tokenizer.json
    too: it rebuilds the pipeline from the vocabulary) with a Metaspace pre-tokenizer, which adds
    the prefix only to text that does not already start with a space: " yes" becomes "▁yes",
    where SentencePiece, and the slow LLaMA tokenizer MobileVLM was trained with, give "▁▁yes".
    The templates tokenise each answer on its own, so an answer that starts with a space would
    get other ids than MobileVLM's. The fix is the legacy LLaMA tokenizer.json recipe: prepend
    "▁" to every text section, spaces to "▁", and keep the pre-tokenizer's split without its
    prefix. Applied only to that shape (no normalizer, a prefixing Metaspace); a tokenizer with
    its own normalizer (the toy tokenizer, SentencePiece models with NFKC rules) is left alone."""
    from tokenizers import normalizers, pre_tokenizers

    backend = getattr(tok, "backend_tokenizer", None)
    pre = getattr(backend, "pre_tokenizer", None)
    if backend is None or backend.normalizer is not None or not isinstance(pre, pre_tokenizers.Metaspace) \
            or pre.prepend_scheme == "never":
        return
    backend.normalizer = normalizers.Sequence([normalizers.Prepend(pre.replacement),
                                               normalizers.Replace(" ", pre.replacement)])
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=pre.replacement, prepend_scheme="never",
                                                     split=pre.split)
