"""What ``gateway rules check`` and ``gateway rules test`` do, as functions the CLI prints the results of.

``check_rules_dir`` validates every rules file and the names they use against the directory in the
database. ``dry_run`` takes a saved message and shows, without changing anything, what the submission
listener would do with it under the rules on disk: which rules matched and why, the portfolio, the
Vorgang (found, and how, or a new one), the audience with every member's reasons, and the SMTP answer.
It prints the plan acceptance carries out (``gateway.domain.routing_plan``), made on facts read as
acceptance reads them, so what it shows is by construction what the running gateway does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db import acceptance
from gateway.db import directory as db
from gateway.db.accounts import find_account
from gateway.db.models import BackOfficeRow, MessageRow, PortfolioRow
from gateway.db.names import directory_names
from gateway.domain.addresses import InvalidAddress, normalise_address
from gateway.domain.parsing import ParsedMessage, parse_message
from gateway.domain.routing_plan import Refused, Routed, RoutingPlan, lookups, plan_submission
from gateway.domain.rules import Decision, Rule, RuleSet
from gateway.errors import InputError, NotFound, Problem, RulesFileError
from gateway.routing.files import directory_problems, load_rules
from gateway.routing.live import decide, refusal, stored_answer
from gateway.smtp_replies import Reply

__all__ = [
    "CheckReport",
    "DryRun",
    "check_lines",
    "check_rules_dir",
    "dry_run",
    "dry_run_lines",
    "read_message",
    "stored_message",
]


@dataclass(frozen=True, slots=True)
class CheckReport:
    directory: Path
    files: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    digest: str = ""
    problems: tuple[Problem, ...] = ()


async def check_rules_dir(session: AsyncSession | None, directory: Path) -> CheckReport:
    """Every problem of the rules in ``directory``; names are checked when ``session`` is given.

    The files are read and parsed in a thread: the web console calls this inside ``gateway serve``,
    whose event loop serves the SMTP sessions meanwhile."""
    try:
        loaded = await asyncio.to_thread(load_rules, directory)
    except RulesFileError as exc:
        return CheckReport(directory, problems=exc.problems)
    problems: list[Problem] = []
    if session is not None:
        names = await session.run_sync(lambda s: directory_names(s.connection()))
        problems = directory_problems(loaded.references, names)
    rule_set = loaded.rule_set
    return CheckReport(directory, rule_set.files, rule_set.rules, rule_set.digest, tuple(problems))


def check_lines(report: CheckReport) -> list[str]:
    """What ``gateway rules check`` prints for ``report``: each problem as FILE:LINE:COL: reason, or
    the valid rule set with its rules."""
    if report.problems:
        return [str(problem) for problem in report.problems]
    return [
        f"{report.directory}: {len(report.rules)} rule(s) in {len(report.files)} file(s), valid; "
        f"rule set {report.digest}",
        *(f"  {rule.label()}" for rule in report.rules),
    ]


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


async def stored_message(session: AsyncSession, gateway_id: str) -> tuple[bytes, str]:
    """The bytes of a stored message and its portfolio's name, to dry-run it again."""
    row = (
        await session.execute(
            select(MessageRow.raw, PortfolioRow.name)
            .join(PortfolioRow, PortfolioRow.id == MessageRow.portfolio_id)
            .where(MessageRow.gateway_id == gateway_id)
        )
    ).first()
    if row is None:
        raise NotFound(f"there is no message with id {gateway_id!r}")
    return bytes(row[0]), str(row[1])


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
    parsed: ParsedMessage | None = None,
    rule_set: RuleSet | None = None,
) -> DryRun:
    """What the gateway would do with ``raw`` (read only: nothing is written).

    The rules decide as the listener decides (``gateway.routing.live.decide``), the facts are read as
    acceptance reads them (``gateway.db.acceptance.routing_facts``), and the plan is the one acceptance
    carries out (``gateway.domain.routing_plan``); what is read besides is only for printing it.
    ``rule_set`` is the set to try (default: the files in ``directory``) and ``parsed`` the message's
    facts when the caller has parsed it already (the console parses untrusted uploads off its loop).
    """
    if rule_set is None:
        rule_set = load_rules(directory).rule_set
    if parsed is None:
        parsed = parse_message(raw, vorgang_header=vorgang_header)
    backoffice, own_portfolio = await _backoffice(session, auth, portfolio)
    sender = (
        mail_from if mail_from is not None else (parsed.from_addresses[0] if parsed.from_addresses else "")
    )
    recipients = tuple(_address(a) for a in rcpt_to) or tuple(dict.fromkeys((*parsed.to, *parsed.cc)))
    if not recipients:
        raise InputError("the message names no recipients; give them with --to")
    decision = decide(
        rule_set,
        backoffice=backoffice,
        envelope_sender=sender,
        recipients=recipients,
        raw=raw,
        parsed=parsed,
        listener=listener,
    )
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
    message = Routed(recipients, parsed, decision, parsed.message_id or "<assigned by the gateway>")

    def plan_of(connection: Connection) -> tuple[RoutingPlan, dict[int, str]]:
        facts = acceptance.routing_facts(connection, row.id, chosen, lookups([message]))
        plan = plan_submission(message, facts)
        known = [plan.vorgang_id] if not plan.opens_vorgang else []
        return plan, acceptance.references_of(connection, known)

    plan, references = await session.run_sync(lambda s: plan_of(s.connection()))
    for address in plan.refused_recipients:
        reply = Reply.UNKNOWN_RECIPIENT.with_text(f"<{address}>: no such member in portfolio {chosen}")
        result.refused_recipients.append((address, reply))
    if plan.refused is Refused.NO_MEMBER:
        result.answer = "no recipient is a member: every RCPT TO is refused, the message is never sent"
        return result
    if plan.refused is not None:
        result.answer = refusal(decision, chosen) or plan.refused.value
        return result

    result.found = plan.found.value
    result.vorgang_key = decision.vorgang_key
    result.vorgang = references.get(plan.vorgang_id)
    result.skipped_participants = list(plan.skipped)
    snap = await db.snapshot(session, row)  # the names of the audience, for people to read

    def name_of(member_id: int) -> str:
        member = snap.members[member_id]
        return member.display_name or member.address

    seen = plan.audience
    result.audience = [
        AudienceMember(
            snap.members[m].address,
            snap.members[m].display_name,
            tuple(r.describe(name_of) for r in seen.via(m)),
        )
        for m in seen.ordered()
    ]
    result.stored = True
    result.answer = stored_answer(
        "<gateway id>", result.vorgang or "a new Vorgang", quarantined=plan.quarantined
    )
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


def dry_run_lines(run: DryRun) -> list[str]:
    """What ``gateway rules test`` prints for ``run``; the console shows the same lines."""
    decision = run.decision
    lines = [
        f"rule set {run.rule_set} ({len(run.files)} file(s))",
        f'message "{run.subject}" from <{run.sender}> to {", ".join(run.recipients)}, {run.size} bytes',
    ]
    who = f"back office {run.backoffice}" if run.backoffice else "no back office"
    lines.append(f"{who}, portfolio {run.portfolio}, listener {run.listener}")
    lines.append("rules:")
    tried = sorted(
        [(h.rule, "hit ", h.why) for h in decision.hits] + [(m.rule, "miss", m.why) for m in decision.misses],
        key=lambda t: (t[0].where.file, t[0].where.line),
    )
    for rule, outcome, why in tried:
        lines.append(f"  {outcome}  {rule.label()}")
        lines.extend(f"          {reason}" for reason in why)
    lines.extend(f"  ----  {rule.label()}: not tried (an earlier hit stopped)" for rule in run.not_tried)
    if not tried and not run.not_tried:
        lines.append("  (no rules)")
    by = f" (by {decision.decided_by.label()})" if decision.decided_by else " (no rule gave a verdict)"
    lines.append(f"verdict: {decision.verdict.value}{by}")
    lines.extend(f"note: {note}" for note in [*decision.notes, *run.notes])
    lines.extend(f"RCPT TO:<{a}> would be answered: {reply}" for a, reply in run.refused_recipients)
    if run.stored:
        key = f", key {run.vorgang_key}" if run.vorgang_key else ""
        if run.vorgang:
            lines.append(f"vorgang: {run.vorgang} (found by {run.found}{key})")
        else:
            lines.append(f"vorgang: a new Vorgang{key}")
        lines.extend(f"copies: set {name}: {value}" for name, value in decision.set_headers)
        if decision.strip_headers:
            lines.append(f"copies: strip {', '.join(decision.strip_headers)}")
        lines.extend(
            f"note: participant {address} is no member of portfolio {run.portfolio}; left out"
            for address in run.skipped_participants
        )
        if decision.verdict.value == "quarantine":
            lines.append("quarantined: no copies until an admin releases it; these would get one then:")
        lines.append(f"audience ({len(run.audience)}):")
        for member in run.audience:
            lines.append(f"  {member.name} <{member.address}>" if member.name else f"  {member.address}")
            lines.extend(f"      {reason}" for reason in member.reasons)
    else:
        lines.append("nothing is stored")
    lines.append(f"answer: {run.answer}")
    return lines
