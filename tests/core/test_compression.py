"""Streaming decompression of `.csv.gz` / `.csv.zst` objects (core.compression) and the key
naming of compressed objects (core.naming): exact content, bounded memory, clear errors."""

from __future__ import annotations

import gzip
import io
import pickle
import tracemalloc
import zlib
from datetime import UTC, datetime

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from catalog_pipeline.core.compression import (
    ESTIMATED_RATIO,
    GZIP,
    ZSTD,
    decompress_prefix,
    decompressed_blocks,
    estimated_data_size,
)
from catalog_pipeline.core.errors import (
    DecompressionError,
    HeaderError,
    PermanentError,
    is_transient,
)
from catalog_pipeline.core.naming import (
    compression_of,
    hidden_file_reason,
    is_csv_key,
    is_hidden_key,
    parse_object_key,
    skip_reason,
    staged_key,
)
from catalog_pipeline.core.samples import sample_csv

KEY = "drops/shop_2026-01-01T00-00-00.csv.gz"
DATA = sample_csv(400, seed=3)
LAST_MODIFIED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def zstd_frames(data: bytes, checksum: bool = True) -> bytes:
    """As the `zstd` command writes it: streamed (no content size) with a checksum."""
    out = io.BytesIO()
    compressor = zstandard.ZstdCompressor(write_checksum=checksum)
    with compressor.stream_writer(out, closefd=False) as writer:
        for start in range(0, len(data), 10_000):
            writer.write(data[start : start + 10_000])
    return out.getvalue()


COMPRESS = {GZIP: gzipped, ZSTD: zstd_frames}


def split(data: bytes, size: int) -> list[bytes]:
    return [data[start : start + size] for start in range(0, len(data), size)]


def inflate(blob: bytes, compression: str, block: int = 4096, out: int = 1024) -> bytes:
    pieces = list(decompressed_blocks(split(blob, block), compression, KEY, out))
    assert all(0 < len(piece) <= out for piece in pieces)
    return b"".join(pieces)


# --- naming -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "csv", "compression"),
    [
        ("a.csv", True, None),
        ("a.CSV", True, None),
        ("p/a.csv.gz", True, "gzip"),
        ("p/a.CSV.GZ", True, "gzip"),
        ("a.csv.zst", True, "zstd"),
        ("a.Csv.Zst", True, "zstd"),
        ("a.gz", False, None),
        ("a.csv.bz2", False, None),
        ("a.csv.gz.tmp", False, None),
        ("a.csvgz", False, None),
        ("folder.csv.gz/", False, None),
    ],
)
def test_csv_keys_plain_gzip_and_zstd(key, csv, compression):
    assert is_csv_key(key) is csv
    assert compression_of(key) == compression


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".csv.zst", ".CSV.GZ", ".csv.ZST"])
def test_the_timestamp_convention_reads_through_the_compression_suffix(suffix):
    name = parse_object_key(f"drops/shop_2026-01-01T06-30-00{suffix}", LAST_MODIFIED)
    assert name.source == "shop"
    assert name.observed_at == datetime(2026, 1, 1, 6, 30, tzinfo=UTC)
    plain = parse_object_key(f"drops/legacy export{suffix}", LAST_MODIFIED)
    assert (plain.source, plain.observed_at) == ("legacy export", LAST_MODIFIED)


def test_a_staged_copy_is_hidden_next_to_its_object_and_never_ingested():
    staged = staged_key(KEY, '"abc-12"')
    assert staged == "drops/.shop_2026-01-01T00-00-00.csv.gz._abc-12_.staged.csv"
    assert staged_key("top.csv.zst", "e1") == ".top.csv.zst.e1.staged.csv"
    assert is_hidden_key(staged)
    assert "decompressed copy" in hidden_file_reason(staged)
    # Whatever the bucket says (S3 used to hide nothing), a hidden key is skipped.
    assert skip_reason(staged) == hidden_file_reason(staged)
    assert skip_reason(KEY) is None
    assert skip_reason("notes.txt") == (
        "not a CSV: the name does not end in '.csv', '.csv.gz' or '.csv.zst'"
    )


# --- decompression ------------------------------------------------------------------


@pytest.mark.parametrize("compression", [GZIP, ZSTD])
@pytest.mark.parametrize(("block", "out"), [(1, 7), (100, 4096), (8192, 1 << 20), (10**7, 1)])
def test_round_trip_in_bounded_blocks(compression, block, out):
    blob = COMPRESS[compression](DATA[:20_000] if block == 1 or out == 1 else DATA)
    expected = DATA[:20_000] if block == 1 or out == 1 else DATA
    assert inflate(blob, compression, block, out) == expected


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(max_size=5000),
    cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=4),
    block=st.integers(min_value=1, max_value=3000),
    out=st.integers(min_value=1, max_value=3000),
    compression=st.sampled_from([GZIP, ZSTD]),
)
def test_any_split_into_members_and_blocks_yields_the_content(data, cuts, block, out, compression):
    # Several gzip members (`cat a.gz b.gz`) or zstd frames read as their concatenation.
    bounds = sorted({0, len(data), *(cut for cut in cuts if cut < len(data))})
    parts = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)] or [b""]
    blob = b"".join(COMPRESS[compression](part) for part in parts)
    assert inflate(blob, compression, block, out) == data


def test_multi_member_gzip_and_zero_padding():
    half = len(DATA) // 2
    blob = gzipped(DATA[:half]) + gzipped(DATA[half:])
    assert inflate(blob, GZIP) == DATA
    assert inflate(blob + bytes(700), GZIP) == DATA  # tape padding, as gzip(1) ignores it
    assert inflate(b"", GZIP) == b""


def test_zstd_skippable_frames_and_frames_without_checksum():
    skippable = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"hello"
    blob = skippable + zstd_frames(DATA, checksum=False) + zstandard.compress(b"tail\n")
    assert inflate(blob, ZSTD) == DATA + b"tail\n"
    assert inflate(b"", ZSTD) == b""


def broken(blob: bytes, compression: str, block: int = 4096) -> DecompressionError:
    with pytest.raises(DecompressionError) as caught:
        inflate(blob, compression, block)
    error = caught.value
    assert str(error).startswith(f"{KEY}: the {compression} stream is broken")
    assert isinstance(error, HeaderError) and isinstance(error, PermanentError)
    assert not is_transient(error)
    assert pickle.loads(pickle.dumps(error)).args == error.args  # crosses to step processes
    return error


@pytest.mark.parametrize("compression", [GZIP, ZSTD])
@pytest.mark.parametrize("keep", [0.5, 0.999, 6, -1, -4])
def test_a_truncated_stream_is_an_error_at_its_end(compression, keep):
    blob = COMPRESS[compression](DATA)
    cut = int(len(blob) * keep) if isinstance(keep, float) else keep % len(blob)
    error = broken(blob[:cut], compression)
    assert error.offset == cut and error.exact
    assert f"at compressed byte {cut:,}" in str(error)
    assert "truncated" in str(error)


def test_a_truncated_second_gzip_member_is_an_error():
    blob = gzipped(DATA) + gzipped(DATA)[:100]
    error = broken(blob, GZIP)
    assert error.offset == len(blob) and "truncated" in error.reason


def test_corrupt_gzip_names_where_it_broke():
    blob = bytearray(gzipped(DATA))
    blob[2] = 7  # the header's compression method: not deflate
    error = broken(bytes(blob), GZIP)
    assert (error.offset, error.exact) == (0, False)
    assert "near compressed byte 0: corrupt data" in str(error)
    assert "unknown compression method" in error.reason

    blob = bytearray(gzipped(DATA))
    assert len(blob) > 64 * 1024  # more than one input slice
    blob[30_000:30_040] = b"\xa5" * 40
    error = broken(bytes(blob), GZIP, block=len(blob))
    # zlib finds it where the data stops making sense, at the latest at the member's
    # checksum: in the input slice (64 KiB) the message names, never before the damage.
    assert error.offset % (64 * 1024) == 0 and error.offset + 64 * 1024 > 30_000
    assert f"near compressed byte {error.offset:,}: corrupt data, detected within" in str(error)


def test_bytes_after_the_last_gzip_member_or_no_gzip_at_all_are_errors():
    blob = gzipped(DATA)
    error = broken(blob + b"garbage", GZIP)
    assert error.offset == len(blob) and "after the last member" in error.reason
    error = broken(DATA, GZIP)  # a plain CSV named .csv.gz
    assert error.offset == 0 and "not a gzip member" in error.reason


def test_corrupt_zstd_is_an_error():
    blob = bytearray(zstd_frames(DATA))
    blob[len(blob) // 2 : len(blob) // 2 + 40] = b"\xa5" * 40
    error = broken(bytes(blob), ZSTD)
    assert "corrupt data" in error.reason and "zstd" in error.reason
    error = broken(zstd_frames(DATA) + b"garbage!", ZSTD)
    assert "Unknown frame descriptor" in error.reason


def test_blocks_before_a_break_are_yielded_first():
    blob = gzipped(DATA)[:-100]
    seen = bytearray()
    with pytest.raises(DecompressionError):
        for block in decompressed_blocks(split(blob, 1000), GZIP, KEY, 512):
            seen += block
    assert seen and DATA.startswith(bytes(seen))


@pytest.mark.parametrize("compression", [GZIP, ZSTD])
def test_decompress_prefix(compression):
    blob = COMPRESS[compression](DATA)
    # A prefix of a longer object: what it holds, at most `limit` bytes, no truncation error.
    start = decompress_prefix(blob[: len(blob) // 2], compression, KEY, 5000, whole=False)
    assert start == DATA[:5000]
    assert decompress_prefix(blob, compression, KEY, 10**9, whole=True) == DATA
    with pytest.raises(DecompressionError, match="truncated"):
        decompress_prefix(blob[:-10], compression, KEY, 10**9, whole=True)


def test_the_executor_estimate():
    assert estimated_data_size(1000, GZIP) == 1000 * ESTIMATED_RATIO
    assert estimated_data_size(1000, None) == 1000
    assert estimated_data_size(None, ZSTD) is None


# --- memory -------------------------------------------------------------------------

STREAM_BYTES = 200 * 1024 * 1024
BLOCK = 1024 * 1024


def _bomb(compression: str) -> bytes:
    """~200 MB of one repeated line, compressed to a few hundred KB (or less)."""
    line = b"SKU-1,A product name,https://shop.example/p/1,12.50\n"
    unit = line * (BLOCK // len(line))
    repeats = STREAM_BYTES // len(unit)
    if compression == GZIP:
        compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
        return b"".join([compressor.compress(unit) for _ in range(repeats)] + [compressor.flush()])
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    return b"".join([compressor.compress(unit) for _ in range(repeats)] + [compressor.flush()])


@pytest.mark.parametrize("compression", [GZIP, ZSTD])
def test_a_decompression_bomb_never_inflates_one_block_in_memory(compression):
    blob = _bomb(compression)
    assert len(blob) < STREAM_BYTES // 100
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        total = 0
        for block in decompressed_blocks([blob], compression, KEY, BLOCK):  # one input block
            total += len(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total >= STREAM_BYTES * 0.99
    # The input, an output block being handed over while the next is made, and the
    # decompressor's buffers: a small multiple of the block, not the 200 MB.
    assert peak < 4 * BLOCK, f"peak {peak:,} bytes"
