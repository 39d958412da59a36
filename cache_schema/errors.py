"""Exceptions raised by cache_schema. Every message names the store/unit/sample/array concerned
and, where there is one, the fix."""

from __future__ import annotations


class CacheError(Exception):
    """Base class of every cache_schema error."""


class CacheFormatError(CacheError):
    """The path is not an alignkd cache, or its layout is damaged."""


class CacheVersionError(CacheFormatError):
    """The store was written with a schema version this code does not read."""


class ProvenanceMismatch(CacheError):
    """The store's provenance differs from what the caller expects (one line per field)."""

    def __init__(self, where: str, diffs: dict[str, tuple[object, object]]):
        self.diffs = diffs
        lines = [f"  {k}: expected {e!r}, got {g!r}" for k, (e, g) in diffs.items()]
        super().__init__(
            f"{where}: provenance differs in {len(diffs)} field(s) "
            f"({', '.join(diffs)}):\n" + "\n".join(lines)
            + "\nUse a new cache path for a different teacher/tokenizer/manifest/encoding, "
            "or pass the store's values."
        )


class SampleValidationError(CacheError, ValueError):
    """A sample or image handed to the writer has a wrong dtype, shape or value range."""


class IntegrityError(CacheError):
    """A checksum does not match what was committed: the data on disk is corrupted."""


class NotFinalizedError(CacheError):
    """The store has no (or a stale) sample index: run `CacheStore.finalize` first."""


class CoverageError(CacheError):
    """finalize found missing, duplicate or unexpected samples/images."""


class UnitExistsError(CacheError):
    """The unit is already committed (resume: skip it; a concurrent duplicate: discard)."""
