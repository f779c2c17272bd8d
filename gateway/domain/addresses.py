"""Mail addresses as the gateway stores and compares them: validated, normalised, case-folded.

email-validator does the RFC work (syntax, IDNA, Unicode normalisation); we only decide the canonical
form. Local parts are case-sensitive by the letter of RFC 5321, but every mail system our customers use
treats them case-insensitively, and two members differing only in case would be a trap, so we fold them.
"""

from __future__ import annotations

import re
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


# RFC 5322's atext: what a dot-atom is made of.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(rf"<((?:{_ATOM}\.)*{_ATOM}@(?:[A-Za-z0-9-]+\.)*[A-Za-z0-9-]+)>")


def plain_path(text: str) -> tuple[str, str] | None:
    """``(address, rest)`` for an SMTP path as nearly every client writes it, ``<local@domain>`` with a
    dot-atom ASCII local part and domain, and then the rest of the command (its parameters); None for
    any other form (a quoted local part, an address literal, source routes, white space or comments,
    UTF-8, ``<>``).

    For these, the answer is exactly what aiosmtpd's parser (``email._header_value_parser``'s
    ``get_angle_addr``) gives, without its token tree; every other form is left to that parser.
    """
    match = _PLAIN_PATH.match(text)
    if match is None:
        return None
    rest = text[match.end() :]
    if rest[:1] in (" ", "\t"):
        # The parser takes the white space after the path with it (str.lstrip's white space, once one
        # space or tab starts it), and a comment after that.
        rest = rest.lstrip()
    if rest.startswith("("):
        return None
    return match.group(1), rest
