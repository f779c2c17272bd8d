"""Every SMTP reply the gateway gives on purpose, with its enhanced status code (RFC 3463), in one place.

Replies are named so that tests, logs and code say ``Reply.UNKNOWN_RECIPIENT`` rather than a string;
``AIOSMTPD_REPLIES`` maps the few replies aiosmtpd writes itself to ours, so that every answer a client
sees carries an enhanced code.
"""

from __future__ import annotations

import enum
import re


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
    SENDER_CHECK_TEMPORARY = (451, "4.7.0", "Could not check the sender now, try again later")
    RECORDED = (250, "2.0.0", "Recorded; not relayed")
    # Mail with NUL bytes for a mailbox server that cannot store them as they are (IMAP without BINARY):
    # refused rather than changed (DESIGN.md §8).
    NUL_NOT_STORABLE = (
        554,
        "5.6.0",
        "The message contains NUL bytes, which the members' mailboxes cannot store as they are; "
        "send it without them (attachments base64-encoded)",
    )
    # Values longer than the records hold are refused where they arrive (gateway.domain.submitters).
    SENDER_TOO_LONG = (501, "5.1.7", "Sender address longer than 256 characters (RFC 5321 4.5.3.1.3)")
    RECIPIENT_TOO_LONG = (501, "5.1.3", "Recipient address longer than 256 characters (RFC 5321 4.5.3.1.3)")
    MESSAGE_ID_TOO_LONG = (554, "5.6.0", "Message-ID longer than 998 characters (RFC 5322 2.1.1)")
    SENDER_NOT_UTF8 = (501, "5.1.7", "Sender address is not valid UTF-8")
    # A back office speaks only for its own addresses in the directory (DESIGN.md §8).
    NOT_YOUR_ADDRESS = (550, "5.7.1", "Not one of this back office's addresses")
    # The MX listener: the first recipient decided the portfolio; another one's address waits for its own
    # transaction (the client sends it again, RFC 5321 4.5.3.1.10).
    OTHER_DESTINATION = (452, "4.5.3", "One destination per message; send to this address separately")
    # --- the edge against hostile and broken clients (issue 12) -------------------------------------------
    # The listener is full and no idle session could make room: the gateway's fault, not the client's.
    BUSY = (421, "4.3.2", "Too many connections to this gateway, try again later")
    # Sessions that have not logged in must do so soon; slots are kept for back offices that have.
    LOGIN_TOO_SLOW = (421, "4.7.0", "Log in sooner; closing")
    IDLE_TOO_LONG = (421, "4.4.2", "Idle too long, closing")
    # The listener was full and this session, silent and not logged in, gave its slot to a newcomer.
    MADE_ROOM = (421, "4.4.2", "Idle too long while others wait, closing")
    SESSION_TOO_LONG = (421, "4.4.2", "Session too long, closing; connect again to go on")
    DATA_TOO_SLOW = (421, "4.4.2", "Message took too long to arrive, closing")
    # All sessions in DATA together hold the listener's budget of memory; this one would exceed it.
    NO_ROOM_NOW = (452, "4.3.1", "Too much mail arriving at once, try again later")
    # Anything unexpected while answering a command: the client retries, and learns nothing of why.
    TEMPORARY_FAILURE = (451, "4.3.0", "Temporary failure, try again later")
    BAD_ADDRESS = (501, "5.1.3", "Bad address syntax")
    AUTH_REQUIRED = (530, "5.7.0", "Authentication required")
    AUTH_LINE_TOO_LONG = (500, "5.5.6", "Authentication exchange line is too long")
    BAD_HOSTNAME = (501, "5.5.2", "Syntax: HELO/EHLO with a host name in UTF-8")
    # aiosmtpd's own answers, with codes (see AIOSMTPD_REPLIES).
    READY_FOR_TLS = (220, "2.0.0", "Ready to start TLS")
    CANNOT_VRFY = (252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery")
    TLS_UNAVAILABLE = (454, "4.7.0", "TLS not available")
    UNKNOWN_COMMAND = (500, "5.5.1", "Command not recognized")
    SYNTAX_ERROR = (500, "5.5.2", "Syntax error")
    COMMAND_TOO_LONG = (500, "5.5.2", "Command line too long")
    NOT_IMPLEMENTED = (502, "5.5.1", "Command not implemented")
    NEED_MAIL = (503, "5.5.1", "Error: need MAIL command")
    NESTED_MAIL = (503, "5.5.1", "Error: nested MAIL command")
    ALREADY_AUTHENTICATED = (503, "5.5.1", "Already authenticated")
    AUTH_SYNTAX = (501, "5.5.4", "Syntax: AUTH <mechanism> [initial-response]")
    UNKNOWN_PARAMETERS = (555, "5.5.4", "Parameters not recognized or not implemented")
    NEED_TLS_FIRST = (530, "5.7.0", "Must issue a STARTTLS command first")
    INSECURE = (554, "5.7.0", "Command refused due to lack of security")
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


# aiosmtpd writes these itself; same meaning, our codes and words. Lines it builds around a value
# (the command, the HELO name, a syntax hint) are matched by pattern in ``with_enhanced_code``.
AIOSMTPD_REPLIES = {
    "552 Error: Too much mail data": str(Reply.TOO_BIG),
    "552 Error: message size exceeds fixed maximum message size": str(Reply.TOO_BIG),
    "500 Line too long (see RFC5321 4.5.3.1.6)": Reply.LINE_TOO_LONG.with_text(
        "Line too long (RFC 5321 4.5.3.1.6)"
    ),
    "250 OK": str(Reply.OK),
    "221 Bye": str(Reply.CLOSING),
    "220 Ready to start TLS": str(Reply.READY_FOR_TLS),
    "454 TLS not available": str(Reply.TLS_UNAVAILABLE),
    "252 Cannot VRFY user, but will accept message and attempt delivery": str(Reply.CANNOT_VRFY),
    "500 Error: bad syntax": str(Reply.SYNTAX_ERROR),
    "500 Error: strict ASCII mode": Reply.SYNTAX_ERROR.with_text("Non-ASCII text without SMTPUTF8"),
    "500 Command line too long": str(Reply.COMMAND_TOO_LONG),
    "503 Error: need MAIL command": str(Reply.NEED_MAIL),
    "503 Error: need RCPT command": Reply.NEED_MAIL.with_text("Error: need RCPT command"),
    "503 Error: nested MAIL command": str(Reply.NESTED_MAIL),
    "503 Already authenticated": str(Reply.ALREADY_AUTHENTICATED),
    "501 Not enough value": str(Reply.AUTH_SYNTAX),
    "501 Too many values": str(Reply.AUTH_SYNTAX),
    "553 5.1.3 Error: malformed address": str(Reply.BAD_ADDRESS),
    "502 EXPN not implemented": Reply.NOT_IMPLEMENTED.with_text("EXPN not implemented"),
    "530 Must issue a STARTTLS command first": str(Reply.NEED_TLS_FIRST),
    "554 Command refused due to lack of security": str(Reply.INSECURE),
    "555 MAIL FROM parameters not recognized or not implemented": str(Reply.UNKNOWN_PARAMETERS),
    "555 RCPT TO parameters not recognized or not implemented": str(Reply.UNKNOWN_PARAMETERS),
}

_ENHANCED = re.compile(r"\d{3}[ -][245]\.\d{1,3}\.\d{1,3} ")
# aiosmtpd's answers that carry a value, and the enhanced code each gets; the value is kept where it is
# our own (a syntax hint, the commands HELP lists) and dropped where the client chose it.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"500 Error: command [\"'].*[\"'] not recognized"), str(Reply.UNKNOWN_COMMAND)),
    (re.compile(r"503 Error: send (\S+) first"), r"503 5.5.1 Error: send \1 first"),
    (re.compile(r"501 (Syntax: .*)"), r"501 5.5.4 \1"),
    (re.compile(r"501 (Error: .*)"), r"501 5.5.4 \1"),
    # HELP: RFC 5321 names 214 for help; HELP for an unknown command lists the known ones with 504.
    (re.compile(r"250 (Syntax: .*)"), r"214 2.0.0 \1"),
    (re.compile(r"250 (Supported commands: .*)"), r"214 2.0.0 \1"),
    (re.compile(r"501 (Supported commands: .*)"), r"504 5.5.1 \1"),
    (re.compile(r"502 Could not VRFY .*"), Reply.BAD_ADDRESS.with_text("Could not VRFY that address")),
    # aiosmtpd's own last resort after an exception (``500 Error: (TypeError) …``): never shown as such.
    (re.compile(r"500 Error: .*"), str(Reply.TEMPORARY_FAILURE)),
)
_CLASS_DEFAULT = {"2": "2.0.0", "4": "4.0.0", "5": "5.0.0"}


def with_enhanced_code(line: str) -> str:
    """The reply line as the client should hear it: with an enhanced status code (RFC 2034).

    The lines that carry none by custom (Postfix sends none either) pass unchanged: the greeting, the
    answer to EHLO (the host name and the extensions, which clients parse) and 354. A line nobody
    foresaw gets the generic code of its class, so the rule holds even for an answer of a newer aiosmtpd.
    """
    known = AIOSMTPD_REPLIES.get(line)
    if known is not None:
        return known
    if _ENHANCED.match(line) or line.startswith(("220 ", "250-", "354 ")) or line == "250 HELP":
        return line
    for pattern, replacement in _PATTERNS:
        if pattern.fullmatch(line):
            return pattern.sub(replacement, line)
    code, _, text = line.partition(" ")
    if len(code) == 3 and code.isdigit() and code[0] in _CLASS_DEFAULT:
        return f"{code} {_CLASS_DEFAULT[code[0]]} {text}"
    return line
