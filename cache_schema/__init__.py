"""cache_schema — the one contract between the phases: the versioned zarr v3 layout of the
teacher cache, its writer (many concurrent writers, atomic units, resume), its verifying reader
and its provenance. Depends on zarr, numcodecs, numpy and pyarrow only. See README.md.

Writer (teacher_dump):
    store = CacheStore.create_or_open(path, Provenance(...))
    if not store.is_unit_complete(unit_id):
        with store.unit_writer(unit_id) as w:          # clean exit commits, exception discards
            w.add_image(image_hash, tokens)            # [|V|, D_t] float32, once per unique image
            w.add_sample(SampleTargets(...))
    CacheStore.open(path).finalize(expected_sample_ids)   # index + coverage check

Reader (student_train):
    r = CacheReader(path, expect={"teacher_fingerprint": ..., "tokenizer_fingerprint": ...})
    s = r.get(sample_id); v = r.image_tokens(s.image_hash)
    for s in r.iter_samples(ids, prefetch=8): ...
"""

from cache_schema.codecs import Encoding
from cache_schema.errors import (
    CacheError,
    CacheFormatError,
    CacheVersionError,
    CoverageError,
    IntegrityError,
    NotFinalizedError,
    ProvenanceMismatch,
    SampleValidationError,
    UnitExistsError,
)
from cache_schema.index import FinalizeReport
from cache_schema.provenance import SCHEMA_VERSION, Provenance
from cache_schema.reader import CacheReader
from cache_schema.schema import SampleTargets
from cache_schema.verify import VerifyReport, verify_store
from cache_schema.writer import CacheStore, UnitWriter

__all__ = [
    "SCHEMA_VERSION", "Provenance", "Encoding", "SampleTargets",
    "CacheStore", "UnitWriter", "FinalizeReport", "CacheReader", "verify_store", "VerifyReport",
    "CacheError", "CacheFormatError", "CacheVersionError", "ProvenanceMismatch", "SampleValidationError",
    "IntegrityError", "NotFinalizedError", "CoverageError", "UnitExistsError",
]
