"""Console sessions: expiry and how often a request records itself."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.admin_sessions import TOUCH_EVERY, Expiry, expiry, new_token, token_hash, worth_touching

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)


def ago(seconds: float) -> dt.datetime:
    return NOW - dt.timedelta(seconds=seconds)


def test_tokens_are_fresh_and_only_their_hash_is_kept() -> None:
    first, second = new_token(), new_token()
    assert first != second
    assert len(first) >= 43
    assert token_hash(first) != first
    assert len(token_hash(first)) == 64
    assert token_hash(first) == token_hash(first)


def test_expiry_by_idle_time_and_by_age() -> None:
    assert expiry(ago(100), ago(10), NOW, idle=1800, max_age=43200) is Expiry.LIVE
    assert expiry(ago(4000), ago(1800), NOW, idle=1800, max_age=43200) is Expiry.IDLE
    assert expiry(ago(43200), ago(1), NOW, idle=1800, max_age=43200) is Expiry.TOO_OLD


@given(
    idle=st.floats(min_value=1, max_value=86400),
    since=st.floats(min_value=0, max_value=86400),
)
def test_a_session_is_touched_before_its_idle_clock_could_run_out(idle: float, since: float) -> None:
    touched = worth_touching(ago(since), NOW, idle=idle)
    # Never more often than once a minute, and always when the last record is a tenth of idle old:
    # a visitor active every few seconds is never taken for idle.
    if since < min(TOUCH_EVERY, idle / 10):
        assert not touched
    else:
        assert touched
