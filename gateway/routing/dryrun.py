"""What ``gateway rules check`` and ``gateway rules test`` do, as functions the CLI prints the results of.

``check_rules_dir`` validates every rules file and the names they use against the directory in the
database. ``dry_run`` takes a saved message and shows, without changing anything, what the submission
listener would do with it under the rules on disk: which rules matched and why, the portfolio, the
Vorgang (found, and how, or a new one), the audience with every member's reasons, and the SMTP answer.
It makes the same decisions as the running gateway, from the same pure parts (``gateway.domain``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db import acceptance
from gateway.db import directory as db
from gateway.db.accounts import find_account
from gateway.db.models import BackOfficeRow, PortfolioRow
from gateway.db.names import directory_names
from gateway.domain.addresses import InvalidAddress, normalise_address
from gateway.domain.audience import audience
from gateway.domain.parsing import parse_message
from gateway.domain.rules import Decision, Rule, Verdict, route_participants
from gateway.domain.threading import Found, choose_vorgang, vorgang_hints
from gateway.errors import InputError, NotFound, Problem, RulesFileError
from gateway.routing.files import directory_problems, load_rules
from gateway.routing.live import refusal, submitted
from gateway.smtp_replies import Reply

__all__ = ["CheckReport", "DryRun", "check_rules_dir", "dry_run", "read_message"]


@dataclass(frozen=True, slots=True)
class CheckReport:
    directory: Path
    files: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    digest: str = ""
    problems: tuple[Problem, ...] = ()


async def check_rules_dir(session: AsyncSession | None, directory: Path) -> CheckReport:
    """Every problem of the rules in ``directory``; names are checked when ``session`` is given."""
    try:
        loaded = load_rules(directory)
    except RulesFileError as exc:
        return CheckReport(directory, problems=exc.problems)
    problems: list[Problem] = []
    if session is not None:
        names = await session.run_sync(lambda s: directory_names(s.connection()))
        problems = directory_problems(loaded.references, names)
    rule_set = loaded.rule_set
    return CheckReport(directory, rule_set.files, rule_set.rules, rule_set.digest, tuple(problems))


# --- dry runs ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AudienceMember:
    address: str
    name: str
    reasons: tuple[str, ...]


@dataclass
class DryRun:
    """What would happen to one message; ``answer`` is what the back office would hear."""

    rule_set: str
    files: tuple[str, ...]
    subject: str
    sender: str
    recipients: tuple[str, ...]
    size: int
    backoffice: str
    portfolio: str
    listener: str
    decision: Decision
    not_tried: tuple[Rule, ...]
    answer: str
    stored: bool
    refused_recipients: list[tuple[str, str]] = field(default_factory=list)
    vorgang: str | None = None
    found: str | None = None
    vorgang_key: str | None = None
    skipped_participants: list[str] = field(default_factory=list)
    audience: list[AudienceMember] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_message(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None


async def dry_run(
    session: AsyncSession,
    directory: Path,
    raw: bytes,
    *,
    vorgang_header: str,
    listener: str = "submission",
    auth: str | None = None,
    portfolio: str | None = None,
    mail_from: str | None = None,
    rcpt_to: Sequence[str] = (),
) -> DryRun:
    """What the gateway would do with ``raw`` (read only: nothing is written)."""
    rule_set = load_rules(directory).rule_set
    parsed = parse_message(raw, vorgang_header=vorgang_header)
    backoffice, own_portfolio = await _backoffice(session, auth, portfolio)
    sender = (
        mail_from if mail_from is not None else (parsed.from_addresses[0] if parsed.from_addresses else "")
    )
    recipients = tuple(_address(a) for a in rcpt_to) or tuple(dict.fromkeys((*parsed.to, *parsed.cc)))
    if not recipients:
        raise InputError("the message names no recipients; give them with --to")
    facts = submitted(
        backoffice=backoffice,
        envelope_sender=sender,
        recipients=recipients,
        raw=raw,
        parsed=parsed,
        listener=listener,
        with_headers=True,
    )
    decision = rule_set.decide(facts)
    tried = {h.rule.name for h in decision.hits} | {m.rule.name for m in decision.misses}
    not_tried = tuple(r for r in rule_set.rules if r.name not in tried)
    chosen = own_portfolio or decision.portfolio
    if chosen is None:
        raise InputError(
            "no portfolio: name the back office with --auth, the portfolio with --portfolio, "
            "or let a rule assign one"
        )
    result = DryRun(
        rule_set=rule_set.digest,
        files=rule_set.files,
        subject=parsed.subject,
        sender=sender,
        recipients=recipients,
        size=len(raw),
        backoffice=backoffice,
        portfolio=chosen,
        listener=listener,
        decision=decision,
        not_tried=not_tried,
        answer="",
        stored=False,
    )
    if listener != "submission":
        result.notes.append(
            f"the running gateway applies routing rules to back-office mail on the submission listener; "
            f"mail on {listener} is not routed by them"
        )
    row = await db.get_portfolio(session, chosen)
    snap = await db.snapshot(session, row)
    members = {m.address: m.id for m in snap.members.values()}
    for address in recipients:
        if address not in members:
            reply = Reply.UNKNOWN_RECIPIENT.with_text(f"<{address}>: no such member in portfolio {chosen}")
            result.refused_recipients.append((address, reply))
    accepted = tuple(a for a in recipients if a in members)
    if not accepted:
        result.answer = "no recipient is a member: every RCPT TO is refused, the message is never sent"
        return result
    refused = refusal(decision, own_portfolio or chosen)
    if refused is not None:
        result.answer = refused
        return result

    hints = vorgang_hints(
        explicit_header=parsed.vorgang_header,
        in_reply_to=parsed.in_reply_to,
        references=parsed.references,
        subject=parsed.subject,
        key=decision.vorgang_key,
    )

    def lookups(connection: Connection) -> tuple[Found, int | None, dict[int, str]]:
        refs = {r for r in (hints.explicit, *hints.subject_references) if r}
        known_refs = acceptance.vorgaenge_by_reference(connection, row.id, refs)
        known_ids = {
            m: vid
            for m, (vid, _) in acceptance.vorgaenge_by_message_id(
                connection, row.id, hints.message_ids
            ).items()
        }
        known_keys = acceptance.vorgaenge_by_key(connection, row.id, [hints.key] if hints.key else [])
        found, vorgang_id = choose_vorgang(
            hints, known_references=known_refs, known_message_ids=known_ids, known_keys=known_keys
        )
        references = acceptance.references_of(connection, [vorgang_id] if vorgang_id is not None else [])
        return found, vorgang_id, references

    found, vorgang_id, references = await session.run_sync(lambda s: lookups(s.connection()))
    result.found = found.value
    result.vorgang_key = decision.vorgang_key
    result.vorgang = references[vorgang_id] if vorgang_id is not None else None

    participants, skipped = route_participants(
        accepted, set(parsed.cc), members, decision.participants, to=parsed.to
    )
    result.skipped_participants = skipped
    seen = audience(snap.portfolio_id, participants, snap.releases)

    def name_of(member_id: int) -> str:
        member = snap.members[member_id]
        return member.display_name or member.address

    result.audience = [
        AudienceMember(
            snap.members[m].address,
            snap.members[m].display_name,
            tuple(r.describe(name_of) for r in seen.via(m)),
        )
        for m in seen.ordered()
    ]
    result.stored = True
    where = result.vorgang or "a new Vorgang"
    if decision.verdict is Verdict.QUARANTINE:
        result.answer = Reply.QUARANTINED.with_text("Accepted as <gateway id>; held for review")
    else:
        result.answer = Reply.ACCEPTED.with_text(f"Accepted as <gateway id> in {where}")
    return result


def _address(text: str) -> str:
    try:
        return normalise_address(text)
    except InvalidAddress as exc:
        raise InputError(str(exc)) from None


async def _backoffice(
    session: AsyncSession, auth: str | None, portfolio: str | None
) -> tuple[str, str | None]:
    """(back office name, its portfolio) for ``--auth``, which is a login or a back office's name."""
    if auth is None:
        return "", portfolio
    account = await session.run_sync(lambda s: find_account(s.connection(), auth.strip().lower()))
    if account is not None:
        if portfolio is not None and portfolio != account.portfolio:
            raise InputError(f"the login {auth} belongs to portfolio {account.portfolio}, not {portfolio}")
        return account.backoffice, account.portfolio
    query = select(BackOfficeRow.name, PortfolioRow.name).join(
        PortfolioRow, PortfolioRow.id == BackOfficeRow.portfolio_id
    )
    query = query.where(BackOfficeRow.name == auth)
    if portfolio is not None:
        query = query.where(PortfolioRow.name == portfolio)
    found = [(str(b), str(p)) for b, p in await session.execute(query)]
    if not found:
        raise NotFound(
            f"there is no back office or login {auth}" + (f" in portfolio {portfolio}" if portfolio else "")
        )
    if len(found) > 1:
        names = ", ".join(p for _, p in found)
        raise InputError(f"back offices named {auth} are in several portfolios ({names}); give --portfolio")
    return found[0]
