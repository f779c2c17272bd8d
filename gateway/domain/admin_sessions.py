"""Web console sessions: new tokens, what of a token is stored, and when a session has expired.

The cookie carries a random token; the database keeps only its SHA-256, so a copy of the sessions table
logs nobody in. A session ends after ``idle`` seconds without a request, and after ``max_age`` seconds
however busy it is, so a stolen cookie does not work forever.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from enum import StrEnum

TOKEN_BYTES = 32


class Expiry(StrEnum):
    """Whether a stored session may still be used."""

    LIVE = "live"
    IDLE = "idle"  # no request for longer than the idle timeout
    TOO_OLD = "too_old"  # older than the absolute limit


def new_token() -> str:
    """A fresh secret for a cookie or a form (URL-safe, 256 bits)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    """What is stored of a session token: its SHA-256 in hex (64 characters)."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def expiry(
    created_at: dt.datetime, last_seen_at: dt.datetime, now: dt.datetime, *, idle: float, max_age: float
) -> Expiry:
    """Whether a session created at ``created_at`` and last used at ``last_seen_at`` is live at ``now``."""
    if (now - created_at).total_seconds() >= max_age:
        return Expiry.TOO_OLD
    if (now - last_seen_at).total_seconds() >= idle:
        return Expiry.IDLE
    return Expiry.LIVE


# A page view records itself at most this often: every request writing its session would put a write
# transaction on SQLite's single writer for each page an admin opens, beside the mail. The idle clock
# then runs at most this long (or a tenth of the idle timeout, if shorter) ahead of the last request.
TOUCH_EVERY = 60.0


def worth_touching(last_seen_at: dt.datetime, now: dt.datetime, *, idle: float) -> bool:
    """Whether a request at ``now`` should record itself as the session's last use."""
    return (now - last_seen_at).total_seconds() >= min(TOUCH_EVERY, idle / 10)
