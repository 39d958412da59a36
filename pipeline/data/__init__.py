"""Manifest builder: LLaVA-format JSON datasets → one parquet row per sample (see docs/CONTRACTS.md).

    from pipeline.data.manifest import build_manifest, read_manifest_meta
"""


class ManifestError(RuntimeError):
    """A build cannot proceed: a whole input file is unreadable or the `data` section is invalid.
    (A bad *record* never raises: it is rejected and written to the rejects file.)"""
