"""Run metadata, the versioned parquet store, comparison and dashboard. Never imports torch."""

from granite_bench.results.metadata import SCHEMA_VERSION, RunMetadata, collect_run_metadata
from granite_bench.results.store import CorruptResultFile, ResultStore

__all__ = [
    "SCHEMA_VERSION",
    "CorruptResultFile",
    "ResultStore",
    "RunMetadata",
    "collect_run_metadata",
]
