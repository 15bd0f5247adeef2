"""Streaming decompression of `.csv.gz` and `.csv.zst` objects, in bounded memory.

`decompressed_blocks` turns the compressed blocks of an object (as a bucket streams them)
into its decompressed blocks, each at most `block_bytes` long: every call into the
decompressor is capped, so a decompression bomb (a small block inflating to gigabytes)
never inflates one block in memory. Memory is one input block, one output block and the
decompressor's window (32 KiB for gzip; the frame's window for zstd, which zstandard
refuses past 128 MiB and level 19 keeps at 8 MiB).

- gzip: `zlib` with `wbits=31`, fed 64 KiB input slices with `max_length`. A stream of
  several members (`cat a.gz b.gz`) is read as their concatenation; zero bytes after the
  last member (tape padding) are ignored, anything else there is an error, as Python's
  `gzip` reads it.
- zstd: `zstandard`'s stream reader across frames (`zstd` writes one frame per input,
  `cat a.zst b.zst` several), read `block_bytes` at a time. zstandard treats a stream cut
  short as a clean end, so the frame and block headers are walked alongside (no
  decompression, a few bytes per 128 KiB block) to tell the two apart.

A corrupt or truncated stream raises `DecompressionError` (permanent: the file is rejected)
naming the object, the compression, the compressed byte offset and the cause.
`decompress_prefix` decompresses just the start of an object, for the sensor's header
probe.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator

from catalog_pipeline.core.errors import DecompressionError

GZIP = "gzip"
ZSTD = "zstd"
COMPRESSIONS = (GZIP, ZSTD)
# Decompressed blocks: small enough to keep memory flat, large enough that a block costs
# nothing per call. (Measured on the plan step of a 200 MB file: 256 KiB blocks wrote the
# temporary copy faster than 1 or 4 MiB ones, which paid for fresh memory pages.)
OUTPUT_BLOCK_BYTES = 256 * 1024
# Input handed to the decompressor at a time: what zlib keeps back as `unconsumed_tail`
# (copied on every capped call), and the precision of a gzip corruption's offset.
INPUT_SLICE_BYTES = 64 * 1024
# What the executor assumes a compressed object inflates to, per compressed byte, when it
# decides whether a file is large enough to fork its chunk steps: scraped catalog CSVs
# gzip about 5-8x and zstd more; the lower end keeps a file that compresses badly from
# looking larger than it is.
ESTIMATED_RATIO = 5
_GZIP_MAGIC = b"\x1f\x8b"


def estimated_data_size(size: int | None, compression: str | None) -> int | None:
    """The decompressed size to plan for from a compressed object's `size` (none for a
    plain object: its size)."""
    if size is None or compression is None:
        return size
    return size * ESTIMATED_RATIO


def decompressed_blocks(
    blocks: Iterable[bytes],
    compression: str,
    object_key: str,
    block_bytes: int = OUTPUT_BLOCK_BYTES,
) -> Iterator[bytes]:
    """The decompressed content of a stream given as consecutive compressed `blocks`, in
    non-empty blocks of at most `block_bytes`. An empty stream (no bytes at all) yields
    nothing; a broken one raises `DecompressionError` after the blocks before the break."""
    return _decompress(blocks, compression, object_key, block_bytes, complete=True)


def decompress_prefix(
    prefix: bytes, compression: str, object_key: str, limit: int, *, whole: bool
) -> bytes:
    """At most `limit` bytes of the decompressed start of an object whose first compressed
    bytes are `prefix` (`whole`: `prefix` is the whole object, so a stream that ends early
    is truncated; otherwise it just ends where the probe stopped reading)."""
    out = bytearray()
    stream = _decompress([prefix], compression, object_key, limit, complete=whole)
    try:
        for block in stream:
            out += block[: limit - len(out)]
            if len(out) >= limit:
                break
    finally:
        stream.close()
    return bytes(out)


def _decompress(
    blocks: Iterable[bytes], compression: str, object_key: str, block_bytes: int, complete: bool
) -> Iterator[bytes]:
    if block_bytes < 1:
        raise ValueError(f"block_bytes must be positive, not {block_bytes}")
    if compression == GZIP:
        return _gunzip(blocks, object_key, block_bytes, complete)
    if compression == ZSTD:
        return _unzstd(blocks, object_key, block_bytes, complete)
    raise ValueError(f"unknown compression {compression!r}: one of {', '.join(COMPRESSIONS)}")


def _slices(blocks: Iterable[bytes]) -> Iterator[memoryview]:
    for block in blocks:
        view = memoryview(block)
        for start in range(0, len(view), INPUT_SLICE_BYTES):
            yield view[start : start + INPUT_SLICE_BYTES]


def _gunzip(
    blocks: Iterable[bytes], object_key: str, block_bytes: int, complete: bool
) -> Iterator[bytes]:
    member = None  # the member being read; None between members
    offset = 0  # compressed bytes consumed before `data`
    for piece in _slices(blocks):
        data: bytes | memoryview = piece
        while data:
            if member is None:
                padding = len(data) - len(bytes(data).lstrip(b"\0"))
                offset, data = offset + padding, data[padding:]
                if not data:
                    break
                if bytes(data[:2]) != _GZIP_MAGIC[: len(data[:2])]:
                    raise DecompressionError(
                        object_key,
                        GZIP,
                        offset,
                        "not a gzip member (no gzip magic number there"
                        + (": bytes after the last member)" if offset else ")"),
                    )
                member = zlib.decompressobj(wbits=31)
            try:
                out = member.decompress(data, block_bytes)
                while out:
                    yield out
                    if len(out) < block_bytes or member.eof:
                        break
                    # Capped: more output may be waiting, from the tail or zlib's state.
                    out = member.decompress(member.unconsumed_tail, block_bytes)
            except zlib.error as error:
                raise DecompressionError(
                    object_key,
                    GZIP,
                    offset,
                    f"corrupt data, detected within the {len(data):,} bytes from there ({error})",
                    exact=False,
                ) from None
            if member.eof:
                rest = member.unused_data
                offset += len(data) - len(rest)
                data, member = rest, None
            else:
                offset += len(data)
                data = b""
    if member is not None and complete:
        raise DecompressionError(
            object_key,
            GZIP,
            offset,
            "the stream ends inside a gzip member: the object is truncated (an upload cut short?)",
        )


class _ZstdSource:
    """The compressed blocks as the file zstandard's stream reader reads, counting the
    bytes it handed over and walking their frame headers."""

    def __init__(self, blocks: Iterable[bytes]) -> None:
        self._slices = _slices(blocks)
        self._pending = memoryview(b"")
        self.position = 0
        self.frames = _ZstdFrames()

    def read(self, size: int = -1) -> bytes:
        if not self._pending:
            self._pending = next(self._slices, memoryview(b""))
        if size < 0:
            size = len(self._pending)
        data = bytes(self._pending[:size])
        self._pending = self._pending[size:]
        self.position += len(data)
        self.frames.feed(data)
        return data


def _unzstd(
    blocks: Iterable[bytes], object_key: str, block_bytes: int, complete: bool
) -> Iterator[bytes]:
    import zstandard

    source = _ZstdSource(blocks)
    reader = zstandard.ZstdDecompressor().stream_reader(
        source, read_size=INPUT_SLICE_BYTES, read_across_frames=True
    )
    with reader:
        while True:
            try:
                out = reader.read(block_bytes)
            except zstandard.ZstdError as error:
                raise DecompressionError(
                    object_key,
                    ZSTD,
                    source.position,
                    f"corrupt data, detected before that byte ({error})",
                    exact=False,
                ) from None
            if not out:
                break
            yield out
    problem = source.frames.unfinished() if complete else None
    if problem:
        raise DecompressionError(
            object_key,
            ZSTD,
            source.position,
            f"the stream ends inside a zstd {problem}: the object is truncated (an upload "
            "cut short?)",
        )


_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE_MAGIC = 0x184D2A50  # 16 values: the low 4 bits are free
_DICTIONARY_ID_BYTES = (0, 1, 2, 4)
_CONTENT_SIZE_BYTES = (0, 2, 4, 8)  # a single-segment frame's flag 0 means 1 byte


class _ZstdFrames:
    """Walks zstd's frame format (RFC 8878: magic, frame header, block headers, checksum;
    skippable frames) without decompressing, to say whether a stream stopped between
    frames. Anything it does not know (legacy frames) turns it off: zstandard decides."""

    def __init__(self) -> None:
        self._field = "magic"
        self._need = 4
        self._buffer = bytearray()
        self._skip = 0
        self._after_skip = ""
        self._checksum = False
        self.lost = False

    def unfinished(self) -> str | None:
        """None when the stream ended between frames (or the walk was given up); else
        what it ended inside."""
        if self.lost or (self._field == "magic" and not self._buffer and not self._skip):
            return None
        if self._skip:
            return "block" if self._after_skip in ("block", "last") else "skippable frame"
        return {"checksum": "frame checksum", "block": "frame"}.get(self._field, "frame header")

    def feed(self, data: bytes) -> None:
        position = 0
        while position < len(data) and not self.lost:
            if self._skip:
                step = min(self._skip, len(data) - position)
                self._skip -= step
                position += step
                if not self._skip:
                    self._skipped()
                continue
            step = min(self._need - len(self._buffer), len(data) - position)
            self._buffer += data[position : position + step]
            position += step
            if len(self._buffer) == self._need:
                raw = bytes(self._buffer)
                self._buffer.clear()
                self._read(raw)

    def _expect(self, field: str, need: int) -> None:
        self._field, self._need = field, need

    def _read(self, raw: bytes) -> None:
        value = int.from_bytes(raw, "little")
        if self._field == "magic":
            if value == _ZSTD_MAGIC:
                self._expect("descriptor", 1)
            elif value & 0xFFFFFFF0 == _SKIPPABLE_MAGIC:
                self._expect("skippable size", 4)
            else:
                self.lost = True
        elif self._field == "descriptor":
            single_segment = bool(value & 0x20)
            self._checksum = bool(value & 0x04)
            content_size = _CONTENT_SIZE_BYTES[value >> 6] or (1 if single_segment else 0)
            rest = (0 if single_segment else 1) + _DICTIONARY_ID_BYTES[value & 0x03] + content_size
            if rest:
                self._expect("header", rest)
            else:
                self._expect("block", 3)
        elif self._field == "header":
            self._expect("block", 3)
        elif self._field == "block":
            last, kind, size = value & 1, (value >> 1) & 3, value >> 3
            if kind == 3:  # reserved: corrupt, and zstandard says so
                self.lost = True
                return
            self._skip_then(1 if kind == 1 else size, "last" if last else "block")
        elif self._field == "skippable size":
            self._skip_then(value, "frame end")
        elif self._field == "checksum":
            self._expect("magic", 4)

    def _skip_then(self, count: int, after: str) -> None:
        self._after_skip = after
        self._skip = count
        if not count:
            self._skipped()

    def _skipped(self) -> None:
        if self._after_skip == "block":
            self._expect("block", 3)
        elif self._after_skip == "last" and self._checksum:
            self._expect("checksum", 4)
        else:
            self._expect("magic", 4)
