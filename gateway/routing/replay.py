"""Rule replay: a candidate rule set run over stored mail, against the live rules, changing nothing.

``gateway rules replay`` and the console's rules page call :func:`replay`. The candidate folder is
loaded and checked first (:func:`load_candidate`: ``RulesFileError`` with FILE:LINE:COL before any
message is read). Then each portfolio's stored back-office messages of the span are read in batches in
the order they were stored (``gateway.db.replay``, one read-only transaction per batch), each decided by
the live rules and by the candidate exactly as the submission listener decides
(``gateway.routing.live.decide``) and planned and compared in ``gateway.domain.replay``. Memory holds
one batch of messages and the differences found; nothing is written, no event recorded.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from gateway.db import acceptance
from gateway.db import replay as db
from gateway.db.names import directory_names
from gateway.domain.parsing import parse_message
from gateway.domain.replay import Change, ChangeKind, Replay, Report
from gateway.domain.routing_plan import Routed, lookups
from gateway.domain.rules import RuleSet
from gateway.errors import InputError, NotFound, RulesFileError
from gateway.routing.files import directory_problems, load_rules
from gateway.routing.live import decide

__all__ = [
    "BATCH",
    "Progress",
    "ReplayResult",
    "load_candidate",
    "parse_since",
    "replay",
    "result_json",
    "result_lines",
]

BATCH = 500  # messages per read: bounds the bytes held at once

_SPAN = re.compile(r"(\d+)\s*([dhw])")


def parse_since(text: str, now: dt.datetime) -> dt.datetime:
    """``30d``, ``12h``, ``2w`` before ``now``, or a date (``2026-11-01``); InputError otherwise."""
    text = text.strip()
    span = _SPAN.fullmatch(text)
    if span is not None:
        count, unit = int(span[1]), span[2]
        return now - dt.timedelta(hours=count * {"h": 1, "d": 24, "w": 24 * 7}[unit])
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InputError(
            f"--since {text!r}: give a span such as 30d, 12h or 2w, or a date such as 2026-11-01"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def load_candidate(
    engine: Engine | None, directory: Path, *, snapshot: Sequence[tuple[Path, bytes]] | None = None
) -> RuleSet:
    """The candidate rule set in ``directory`` (or ``snapshot``), checked as ``gateway rules check``
    checks it, names included when ``engine`` is given; ``RulesFileError`` lists every problem."""
    loaded = load_rules(directory, snapshot=snapshot)
    if engine is not None:
        with engine.begin() as connection:
            names = directory_names(connection)
        problems = directory_problems(loaded.references, names)
        if problems:
            count = len(problems)
            raise RulesFileError(
                f"the rules in {directory} have {count} problem{'s' if count != 1 else ''}", problems
            )
    return loaded.rule_set


@dataclass(frozen=True, slots=True)
class Progress:
    done: int
    total: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ReplayResult:
    """The replay's report with what people need to read it: Vorgang references and member addresses
    of the examples, the two rule sets, the span."""

    live: str
    candidate: str
    portfolios: list[str]
    since: dt.datetime | None
    report: Report
    seconds: float = 0.0
    references: dict[int, str] = field(default_factory=dict)
    addresses: dict[int, str] = field(default_factory=dict)

    def vorgang(self, ref: object) -> str:
        if ref is None:
            return "not stored"
        if isinstance(ref, str):
            return f"a new Vorgang (opened by {ref.removeprefix('new:')})"
        return self.references.get(int(ref), f"Vorgang {ref}") if isinstance(ref, int) else str(ref)

    def shown(self, kind: ChangeKind, value: object) -> str:
        """One side of a change, in words."""
        if kind is ChangeKind.VORGANG:
            return self.vorgang(value)
        if kind is ChangeKind.KEY:
            return "no key" if value is None else str(value)
        if kind is ChangeKind.PARTICIPANTS and isinstance(value, frozenset):
            people = sorted(f"{self.addresses.get(m, f'member {m}')} ({role})" for m, role in value)
            return ", ".join(people) or "nobody"
        if kind is ChangeKind.AUDIENCE and isinstance(value, frozenset):
            return ", ".join(sorted(self.addresses.get(m, f"member {m}") for m in value)) or "nobody"
        return str(value)


def replay(
    engine: Engine,
    live: RuleSet,
    candidate: RuleSet,
    *,
    portfolio: str | None = None,
    since: dt.datetime | None = None,
    vorgang_header: str = "X-Gateway-Vorgang",
    batch: int = BATCH,
    progress: Callable[[Progress], None] | None = None,
    stopped: Callable[[], bool] = lambda: False,
) -> ReplayResult:
    """Replay ``candidate`` against ``live`` over the stored mail (of ``portfolio``, since ``since``).

    ``progress`` hears after each batch; ``stopped`` is asked before each and ends the replay early
    (the report then covers what was read). Runs on the calling thread: callers with an event loop
    run it in a thread of its own."""
    started = time.monotonic()
    with engine.begin() as connection:
        chosen = db.portfolios(connection, portfolio)
        if portfolio is not None and not chosen:
            raise NotFound(f"there is no portfolio {portfolio}")
        total = sum(db.count_submissions(connection, pid, since) for pid, _ in chosen)
    report = Report()
    result = ReplayResult(live.digest, candidate.digest, [name for _, name in chosen], since, report)
    done = 0
    for portfolio_id, name in chosen:
        run = Replay(report)
        after = 0
        while not stopped():
            with engine.begin() as connection:
                stored = db.submissions_after(connection, portfolio_id, since, after, batch)
                if not stored:
                    break
                pairs = [_routed(s, live, candidate, vorgang_header) for s in stored]
                readable = [(s, pair) for s, pair in zip(stored, pairs, strict=True) if pair is not None]
                wanted = lookups([m for _, pair in readable if pair is not None for m in pair])
                facts = db.batch_facts(connection, portfolio_id, name, wanted)
            report.unreadable += len(stored) - len(readable)
            for s, pair in readable:
                assert pair is not None
                run.message(pair[0], pair[1], s.history, facts)
            after = stored[-1].history.row
            done += len(stored)
            if progress is not None:
                progress(Progress(done, total, time.monotonic() - started))
    result.seconds = time.monotonic() - started
    _names(engine, result)
    return result


def _routed(
    stored: db.StoredSubmission, live: RuleSet, candidate: RuleSet, vorgang_header: str
) -> tuple[Routed, Routed] | None:
    """The stored message decided by each rule set, as the submission listener decided it."""
    parsed = parse_message(stored.raw, vorgang_header=vorgang_header)
    recipients = stored.recipients or tuple(dict.fromkeys((*parsed.to, *parsed.cc)))
    if not recipients:
        return None

    def routed(rule_set: RuleSet) -> Routed:
        decision = decide(
            rule_set,
            backoffice=stored.backoffice,
            envelope_sender=stored.envelope_sender,
            recipients=recipients,
            raw=stored.raw,
            parsed=parsed,
            listener=stored.listener,
        )
        return Routed(recipients, parsed, decision, stored.history.message_id)

    same = live.digest == candidate.digest
    first = routed(live)
    return first, first if same else routed(candidate)


def _examples(report: Report) -> list[Change]:
    kept = [c for group in report.examples.values() for c in group]
    return kept + [c for group in report.not_reproduced_examples.values() for c in group]


def _names(engine: Engine, result: ReplayResult) -> None:
    """The references and addresses the examples name (a few dozen at most)."""
    vorgaenge: set[int] = set()
    members: set[int] = set()
    for change in _examples(result.report):
        for value in (change.before, change.after):
            if change.kind is ChangeKind.VORGANG and isinstance(value, int):
                vorgaenge.add(value)
            elif change.kind is ChangeKind.PARTICIPANTS and isinstance(value, frozenset):
                members.update(m for m, _ in value)
            elif change.kind is ChangeKind.AUDIENCE and isinstance(value, frozenset):
                members.update(value)
    with engine.begin() as connection:
        result.references = acceptance.references_of(connection, vorgaenge)
        result.addresses = acceptance.member_addresses(connection, members)


def _example_json(result: ReplayResult, change: Change) -> dict[str, object]:
    return {
        "message": change.gateway_id,
        "subject": change.subject,
        "before": result.shown(change.kind, change.before),
        "after": result.shown(change.kind, change.after),
    }


def result_json(result: ReplayResult) -> dict[str, object]:
    """What ``--json`` prints: the same content as :func:`result_lines`."""
    report = result.report
    return {
        "live_rule_set": result.live,
        "candidate_rule_set": result.candidate,
        "portfolios": result.portfolios,
        "since": result.since.isoformat() if result.since else None,
        "messages": report.messages,
        "changed_messages": report.changed,
        "unreadable": report.unreadable,
        "changes": [
            {
                "rule": rule,
                "kind": kind.value,
                "count": count,
                "examples": [_example_json(result, c) for c in examples],
            }
            for rule, kind, count, examples in report.groups()
        ],
        "not_reproduced_by_live_rules": [
            {
                "kind": kind.value,
                "count": report.not_reproduced[kind],
                "examples": [_example_json(result, c) for c in report.not_reproduced_examples[kind]],
            }
            for kind in ChangeKind
            if report.not_reproduced[kind]
        ],
        "seconds": round(result.seconds, 3),
    }


def result_lines(result: ReplayResult) -> list[str]:
    """What ``gateway rules replay`` prints; the console shows the same lines."""
    report = result.report
    since = f" since {result.since:%Y-%m-%d %H:%M} UTC" if result.since else ""
    lines = [
        f"candidate rule set {result.candidate} against live rule set {result.live}",
        f"{report.messages} message(s) replayed in {', '.join(result.portfolios) or 'no portfolio'}{since}: "
        f"{report.changed} would change",
    ]
    if report.unreadable:
        lines.append(f"{report.unreadable} message(s) skipped: no recipients known to replay them with")
    current = None
    for rule, kind, count, examples in report.groups():
        if rule != current:
            lines.append(f"rule {rule}:")
            current = rule
        lines.append(f"  {kind.value}: {count} message(s)")
        for change in examples:
            lines.append(
                f'    {change.gateway_id} "{change.subject}": '
                f"{result.shown(kind, change.before)} -> {result.shown(kind, change.after)}"
            )
    if not report.counts:
        lines.append("no differences: the candidate routes every message as the live rules do")
    if report.not_reproduced:
        lines.append(
            "not counted above: where even the live rules no longer reproduce what was stored "
            "(the directory or the live rules changed since):"
        )
        for kind in ChangeKind:
            if report.not_reproduced[kind]:
                lines.append(f"  {kind.value}: {report.not_reproduced[kind]} message(s)")
                for change in report.not_reproduced_examples[kind]:
                    lines.append(
                        f'    {change.gateway_id} "{change.subject}": stored '
                        f"{result.shown(kind, change.before)}, now {result.shown(kind, change.after)}"
                    )
    return lines
