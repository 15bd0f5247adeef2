"""`read_ahead`: the same blocks in the same order, read while the consumer works."""

from __future__ import annotations

import threading

import pytest

from catalog_pipeline.core.read_ahead import read_ahead


@pytest.mark.parametrize("depth", [1, 2, 5])
@pytest.mark.parametrize("count", [0, 1, 7])
def test_yields_every_block_in_order(depth, count):
    blocks = [bytes([index]) * (index + 1) for index in range(count)]
    assert list(read_ahead(iter(blocks), depth)) == blocks


def test_the_next_block_is_read_while_the_consumer_holds_this_one():
    second_read = threading.Event()

    def source():
        yield b"first"
        second_read.set()
        yield b"second"

    blocks = read_ahead(source())
    assert next(blocks) == b"first"
    # Nothing more asked for: the thread has read on by itself.
    assert second_read.wait(timeout=10)
    assert list(blocks) == [b"second"]


def test_a_read_error_comes_after_the_blocks_before_it():
    def source():
        yield b"one"
        yield b"two"
        raise OSError("connection reset at byte 6")

    blocks = read_ahead(source())
    assert next(blocks) == b"one"
    assert next(blocks) == b"two"
    with pytest.raises(OSError, match="connection reset at byte 6"):
        next(blocks)


def test_stopping_early_closes_the_source_and_ends_the_thread():
    closed = threading.Event()

    def source():
        try:
            for index in range(1000):
                yield str(index).encode()
        finally:
            closed.set()

    blocks = read_ahead(source(), depth=2)
    assert next(blocks) == b"0"
    blocks.close()
    assert closed.is_set()
    assert not [t for t in threading.enumerate() if t.name == "read-ahead"]


def test_an_error_in_the_consumer_stops_the_reading():
    closed = threading.Event()

    def source():
        try:
            while True:
                yield b"x"
        finally:
            closed.set()

    with pytest.raises(RuntimeError):
        for _ in read_ahead(source()):
            raise RuntimeError("the planner gave up")
    assert closed.is_set()
