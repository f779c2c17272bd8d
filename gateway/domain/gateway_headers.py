"""The gateway's own headers, defined once: what it writes on copies and relayed mail, and what it strips.

Every ``X-Gateway-…`` header is the gateway's: one that came with a message, from a back office or from a
member, never reaches a copy or a relayed mail, whatever its name after the prefix (a sender could
otherwise name a Vorgang, an actual sender or a loop marker for us). The stored raw message keeps them
as they came: it is the evidence of what was received, and every rendering for someone else (copies,
relayed mail) removes them (``gateway.domain.copies``).

Headers that say who a mail is to without the other recipients seeing it (Bcc, Resent-Bcc) never reach
a copy or a relayed mail either (DESIGN.md §8); Postfix's cleanup removes them the same way.
"""

from __future__ import annotations

PREFIX = "X-Gateway-"

VORGANG = "X-Gateway-Vorgang"
COPY_ID = "X-Gateway-Copy-Id"
SHARED_VIA = "X-Gateway-Shared-Via"
ORIGINAL_FROM = "X-Gateway-Original-From"
ACTUAL_SENDER = "X-Gateway-Actual-Sender"
LOOP = "X-Gateway-Loop"

# Never passed on: the blind recipients of a message are nobody else's business.
BLIND = ("Bcc", "Resent-Bcc")
# Dropped from every copy and relayed mail, as Postfix's message_drop_headers does by default: the
# blind recipients, a Return-Path only the final delivery may write, and a Content-Length that mbox
# readers would trust over the real length.
DROPPED = (*BLIND, "Content-Length", "Return-Path")

# Replaced on copies with a reply path: every answer, with "Reply" or "Reply all", comes back to us, and
# the copy has exactly the From, Reply-To and Sender the gateway set (it sets no Sender).
REPLY_PATH = ("From", "Sender", "Reply-To", "References")


def is_own(name: str) -> bool:
    """Whether ``name`` is one of the gateway's headers (any ``X-Gateway-…``), in any case."""
    return name.strip().lower().startswith(PREFIX.lower())
