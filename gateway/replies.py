"""Every SMTP reply the gateway gives on purpose, with its enhanced status code (RFC 3463), in one place.

Replies are named so that tests, logs and code say ``Reply.UNKNOWN_RECIPIENT`` rather than a string;
``AIOSMTPD_REPLIES`` maps the few replies aiosmtpd writes itself to ours, so that every answer a client
sees carries an enhanced code.
"""

from __future__ import annotations

import enum


class Reply(enum.Enum):
    """An SMTP reply: code, enhanced code, text. ``str(reply)`` is the line to send."""

    OK = (250, "2.0.0", "OK")
    SENDER_OK = (250, "2.1.0", "Sender OK")
    RECIPIENT_OK = (250, "2.1.5", "Recipient OK")
    ACCEPTED = (250, "2.0.0", "Accepted")
    # A routing rule quarantined the message: stored, but nobody gets it until an admin releases it.
    QUARANTINED = (250, "2.0.0", "Accepted; held for review")
    CLOSING = (221, "2.0.0", "Bye")
    TOO_MANY_CONNECTIONS = (421, "4.7.0", "Too many connections from your address, try again later")
    SHUTTING_DOWN = (421, "4.3.2", "Gateway shutting down, try again later")
    TRY_AGAIN = (451, "4.3.0", "Temporary failure storing the message, try again later")
    RATE_LIMITED = (451, "4.7.1", "Too many messages from your address, slow down and try again later")
    TOO_MANY_RECIPIENTS = (452, "4.5.3", "Too many recipients")
    LINE_TOO_LONG = (500, "5.5.2", "Line too long")
    UNKNOWN_RECIPIENT = (550, "5.1.1", "No such member here")
    TOO_BIG = (552, "5.3.4", "Message too big for this gateway")
    HEADER_TOO_BIG = (552, "5.3.4", "Header section too big")
    LOOP = (554, "5.4.6", "Too many Received headers: mail loop")
    # A routing rule assigned the message to a portfolio other than the back office's own (DESIGN.md §1).
    WRONG_PORTFOLIO = (550, "5.7.1", "Routed to a portfolio this back office does not submit into")
    # The MX listener (members' mail).
    NOT_HERE = (550, "5.1.1", "No such address here; this gateway does not relay")
    NOT_A_REPLY = (550, "5.7.1", "This address only takes answers to the gateway's mail")
    REFUSED = (550, "5.7.1", "Refused")
    # The copy the reply address names was revoked (its member lost access through a directory change).
    ACCESS_WITHDRAWN = (550, "5.7.1", "You no longer have access to the message this address answers")
    SENDER_CHECK_TEMPORARY = (451, "4.7.0", "Could not check the sender now, try again later")
    RECORDED = (250, "2.0.0", "Recorded; not relayed")
    # Untrusted input at the edge (issue 12): a message its parse worker could not read within the
    # budget, and a client that guessed too many passwords.
    NOT_READ = (451, "4.3.0", "Could not read the message in time, try again later")
    LOGINS_THROTTLED = (454, "4.7.0", "Too many failed logins, try again later")

    @property
    def code(self) -> int:
        return int(self.value[0])

    @property
    def enhanced(self) -> str:
        return str(self.value[1])

    def with_text(self, text: str) -> str:
        """The reply line with its own text in place of the default one."""
        return f"{self.code} {self.enhanced} {text}"

    def __str__(self) -> str:
        return self.with_text(str(self.value[2]))


# aiosmtpd writes these itself (size, line length during DATA and MAIL FROM SIZE=); same meaning, our codes.
AIOSMTPD_REPLIES = {
    "552 Error: Too much mail data": str(Reply.TOO_BIG),
    "552 Error: message size exceeds fixed maximum message size": str(Reply.TOO_BIG),
    "500 Line too long (see RFC5321 4.5.3.1.6)": Reply.LINE_TOO_LONG.with_text(
        "Line too long (RFC 5321 4.5.3.1.6)"
    ),
}
