"""What a sender refused at a reply or intake address is told, and what the event log records instead.

DESIGN.md §8: no answer reveals who is a member. An SMTP answer travels back to whoever sent the
mail, and from there into a bounce anybody can read; so the answer is one fixed sentence per kind of
refusal, the same for a stranger, for a member who does not see the message (now), and for a member
whose copy was revoked. A stranger who tries addresses learns nothing from the answer that a member
who may not answer would not also get. The precise reason (not a member of the portfolio, not in the
audience, copy revoked) goes to the event log, where an admin reads it, with the sender's address as
the gateway read it (the canonical form the directory compares); no text here changes an address
further, not even the case of its first letter at the start of a sentence.

Why no address appears in the answer at all: an answer that repeats the sender's address differs from
sender to sender, and the point is that the two refusals read the same. The sender knows the address
they wrote from; the bounce their own server writes quotes the mail.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["NOT_ENTITLED_TO_ANSWER", "NOT_ENTITLED_TO_OPEN", "Refusal", "Why", "refusal"]

# One answer per kind of refusal; each says what happened (nothing was relayed or stored) and what a
# person who should have been able to do it does next, without saying which check failed.
NOT_ENTITLED_TO_ANSWER = (
    "This mail may not answer the message this reply address belongs to; nothing was relayed. "
    "If you should be able to answer it, ask your administrator"
)
NOT_ENTITLED_TO_OPEN = (
    "This mail may not open a Vorgang at this address; nothing was stored. "
    "If you should be able to, ask your administrator"
)


class Why(enum.Enum):
    """The precise reason, for the event log only."""

    NOT_A_MEMBER = "not a member of this portfolio"
    NOT_IN_AUDIENCE = "not among the people who may see it now"


@dataclass(frozen=True, slots=True)
class Refusal:
    """``answer`` is the SMTP text (without code) the sender gets; ``reason`` what the event log keeps."""

    answer: str
    reason: str


def refusal(sender: str, why: Why, *, opening: bool = False) -> Refusal:
    """The refusal of mail from ``sender`` (its From address; ``""`` when there is none)
    for the reason ``why``; ``opening`` for mail to an intake address, else an answer to a message.

    The answer depends on ``opening`` alone; ``sender`` and ``why`` reach only the log reason, and the
    address is kept exactly as given.
    """
    who = sender.strip() or "a mail without From"
    what = "open a Vorgang" if opening else "answer this message"
    reason = f"{who} may not {what}: {why.value}"
    return Refusal(NOT_ENTITLED_TO_OPEN if opening else NOT_ENTITLED_TO_ANSWER, reason)
