"""What one SMTP session in DATA counts against its listener's memory budget (DESIGN.md §8).

A budget that counted only the bytes received would be overshot by what the session has allocated
around them: the buffer that collects the message grows an eighth ahead of its content (CPython's
``BytesIO``), and the stream reader under the session holds one read from the socket on top of up to
twice the line limit. Twenty sessions at once overshot a 100 MiB budget by 3 % that way
(bench/hostile.py); counting the allocation keeps the budget an upper bound.
"""

from __future__ import annotations

SOCKET_READ = 256 * 1024
"""The most asyncio's socket transport reads at once (``max_size`` of its selector transport)."""


def buffer_footprint(size: int) -> int:
    """The most a ``BytesIO`` holding ``size`` bytes has allocated: it grows by an eighth at a time."""
    return size + (size >> 3) + 64


def reading_footprint(line_length_limit: int) -> int:
    """What a session's stream reader may hold: twice the line limit before it pauses, and one read."""
    return 2 * line_length_limit + SOCKET_READ


def session_footprint(size: int, line_length_limit: int) -> int:
    """What a session holding ``size`` bytes of DATA counts against the budget."""
    return reading_footprint(line_length_limit) + buffer_footprint(size)
