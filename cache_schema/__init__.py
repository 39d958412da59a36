"""cache_schema — the one contract between the phases: the versioned zarr v3 layout of the
teacher cache, its writer (many concurrent writers, atomic units, resume), its verifying reader
and its provenance. Depends on zarr, numcodecs, numpy and pyarrow only."""
