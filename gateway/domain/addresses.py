"""Mail addresses as the gateway stores and compares them: validated, normalised, case-folded.

email-validator does the RFC work (syntax, IDNA, Unicode normalisation); we only decide the canonical
form. Local parts are case-sensitive by the letter of RFC 5321, but every mail system our customers use
treats them case-insensitively, and two members differing only in case would be a trap, so we fold them.
"""

from __future__ import annotations

from functools import lru_cache

from email_validator import EmailNotValidError, validate_email


class InvalidAddress(ValueError):
    """The text is not a usable mail address; the message says why in plain words."""


def normalise_address(text: str) -> str:
    """Return the canonical form of ``text`` or raise :class:`InvalidAddress`."""
    return _canonical(text.strip())


# Every RCPT of every message asks; the same few thousand members' addresses come back all day, and
# validation is a fifth of the submission listener's own work per message (measured with py-spy).
@lru_cache(maxsize=4096)
def _canonical(candidate: str) -> str:
    if not candidate:
        raise InvalidAddress("the address is empty")
    try:
        valid = validate_email(candidate, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        raise InvalidAddress(f"{candidate!r} is not a valid mail address: {exc}") from None
    return valid.normalized.lower()
