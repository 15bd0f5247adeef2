"""The `source_csvs` partitions: one dynamic partition per object key in the bucket."""

from __future__ import annotations

import dagster as dg

from catalog_pipeline.core.naming import decode_partition_key, encode_partition_key

source_csvs = dg.DynamicPartitionsDefinition(name="source_csvs")


def partition_key_for(object_key: str) -> str:
    """The `source_csvs` partition key of an object (percent-encoded where Dagster needs it)."""
    return encode_partition_key(object_key)


def object_key_for(partition_key: str) -> str:
    return decode_partition_key(partition_key)
