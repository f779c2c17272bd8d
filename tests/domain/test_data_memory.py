"""What a session in DATA counts against its listener's budget covers what it really allocates."""

from __future__ import annotations

import asyncio.selector_events
import io
import sys

from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.data_memory import (
    SOCKET_READ,
    buffer_footprint,
    reading_footprint,
    session_footprint,
)

EMPTY = sys.getsizeof(io.BytesIO())


@given(st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=400))
def test_a_growing_buffer_never_allocates_more_than_its_footprint(line_lengths: list[int]) -> None:
    # sys.getsizeof of a BytesIO is what its buffer has allocated, including what it grew ahead.
    buffer = io.BytesIO()
    for length in line_lengths:
        buffer.write(b"x" * length)
        allocated = sys.getsizeof(buffer) - EMPTY
        assert allocated <= buffer_footprint(buffer.tell())


def test_a_buffer_of_three_byte_lines_stays_within_its_footprint() -> None:
    # The flood of issue 12: 24 MiB (here 3 MiB) in lines of three bytes, each growing the buffer a little.
    buffer = io.BytesIO()
    worst = 0.0
    for _ in range(1024 * 1024):
        buffer.write(b"x\r\n")
        worst = max(worst, (sys.getsizeof(buffer) - EMPTY) / buffer_footprint(buffer.tell()))
    assert worst <= 1.0


def test_the_socket_read_is_asyncios() -> None:
    # If asyncio reads more at once, the reading footprint must follow.
    assert asyncio.selector_events._SelectorSocketTransport.max_size == SOCKET_READ


def test_a_session_counts_its_reading_buffer_and_its_message() -> None:
    assert reading_footprint(1000) == 2000 + SOCKET_READ
    assert session_footprint(0, 1000) == reading_footprint(1000) + 64
    assert session_footprint(8 * 1024 * 1024, 1000) == reading_footprint(1000) + 9 * 1024 * 1024 + 64
    sizes = [session_footprint(n, 1000) for n in range(0, 10_000, 7)]
    assert sizes == sorted(sizes), "more bytes never count less"
