"""What a refused sender is told: nothing about who is a member; the event log keeps the precise reason."""

from __future__ import annotations

import pytest

from gateway.domain.refusals import NOT_ENTITLED_TO_ANSWER, NOT_ENTITLED_TO_OPEN, Why, refusal


@pytest.mark.parametrize("opening", [False, True])
def test_a_stranger_and_a_member_without_access_get_the_same_answer(opening: bool) -> None:
    stranger = refusal("evil@else.example", Why.NOT_A_MEMBER, opening=opening)
    member = refusal("sb-a1@kunde-a.example", Why.NOT_IN_AUDIENCE, opening=opening)
    nobody = refusal("", Why.NOT_A_MEMBER, opening=opening)
    assert stranger.answer == member.answer == nobody.answer
    assert stranger.answer == (NOT_ENTITLED_TO_OPEN if opening else NOT_ENTITLED_TO_ANSWER)


@pytest.mark.parametrize("answer", [NOT_ENTITLED_TO_ANSWER, NOT_ENTITLED_TO_OPEN])
def test_the_answer_names_neither_membership_nor_access(answer: str) -> None:
    words = answer.lower()
    for telling in ("member", "portfolio", "see it", "access", "among", "revoked", "rights"):
        assert telling not in words, telling


def test_the_log_reason_says_precisely_why_with_the_address_unchanged() -> None:
    assert refusal("evil@else.example", Why.NOT_A_MEMBER).reason == (
        "evil@else.example may not answer this message: not a member of this portfolio"
    )
    assert refusal("sb-a1@kunde-a.example", Why.NOT_IN_AUDIENCE).reason == (
        "sb-a1@kunde-a.example may not answer this message: not among the people who may see it now"
    )
    assert refusal("evil@else.example", Why.NOT_A_MEMBER, opening=True).reason == (
        "evil@else.example may not open a Vorgang: not a member of this portfolio"
    )
    assert refusal("", Why.NOT_A_MEMBER).reason.startswith("a mail without From may not")


def test_an_answer_is_one_line_of_ascii_fit_for_an_smtp_reply() -> None:
    for answer in (NOT_ENTITLED_TO_ANSWER, NOT_ENTITLED_TO_OPEN):
        assert answer.isascii()
        assert "\r" not in answer
        assert "\n" not in answer
        assert len("550 5.7.1 " + answer) <= 510  # RFC 5321 4.5.3.1.5: a reply line of 512 with CRLF
