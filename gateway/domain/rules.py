"""Routing rules: which rules match a submitted message, and what they decide together (DESIGN.md §6).

Pure: the rules come in as frozen values (``gateway.routing.files`` reads them from ``rules/*.yaml``), the
message as :class:`Submitted`, and :meth:`RuleSet.decide` returns a :class:`Decision` that keeps every
rule that matched (with why) and every rule that did not, so that acceptance can record which rules
routed a message and ``gateway rules test`` can print the same record for a saved .eml.

How rules combine, in the order they are listed (files in name order, rules in file order):

- A rule whose ``match`` holds is a *hit*. Its actions apply, then evaluation stops, unless the rule says
  ``then: continue``. A rule without a verdict (accept, reject, quarantine) continues by default, one
  with a verdict stops by default.
- The first hit that sets the portfolio, the Vorgang key, a header or the verdict decides it; later hits
  cannot change what an earlier one decided (the earlier rule is the more specific one by convention,
  as in a firewall). Participants and headers to strip add up.
- No verdict after all rules: the message is accepted, as it is without any rules.

Patterns: ``exact`` and ``glob`` compare the whole value, a ``regex`` matches anywhere in it unless it
is anchored (``^…$``), as ``re.search`` does. Named groups of regexes that matched can be used in the
actions as ``{name}``. Addresses and domains are compared in lower case always; the other values (the
subject, header values) only with ``ignore_case``.
"""

from __future__ import annotations

import enum
import fnmatch
import hashlib
import re
import string
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeAlias

from gateway.domain import gateway_headers
from gateway.domain.addresses import InvalidAddress, normalise_address
from gateway.domain.model import Participant, ParticipantRole

__all__ = [
    "EMPTY_RULE_SET",
    "MAX_KEY_LENGTH",
    "NOWHERE",
    "PROTECTED_HEADERS",
    "AddedParticipant",
    "AllOf",
    "Answer",
    "AnyOf",
    "Check",
    "Condition",
    "CopyHeaders",
    "Decision",
    "DirectoryNames",
    "FieldName",
    "FieldTest",
    "Hit",
    "InvalidAnswer",
    "InvalidTemplate",
    "Miss",
    "NotOf",
    "Pattern",
    "PatternKind",
    "Rule",
    "RuleSet",
    "SizeTest",
    "Submitted",
    "Verdict",
    "Where",
    "always_matches",
    "check",
    "defined_groups",
    "digest_of",
    "is_protected_header",
    "render_template",
    "route_participants",
    "template_fields",
    "unreachable",
]

# The column that holds a Vorgang's key (``vorgaenge.key``) is this long.
MAX_KEY_LENGTH = 200

# Headers a rule may neither set nor strip on copies: the gateway's own (every X-Gateway-… header) and
# those that carry the reply path and threading (DESIGN.md §5); a rule must not break answering.
PROTECTED_HEADERS = frozenset(
    {
        *(name.lower() for name in gateway_headers.REPLY_PATH),
        *(name.lower() for name in gateway_headers.BLIND),
        "in-reply-to",
        "message-id",
        "received",
    }
)


def is_protected_header(name: str) -> bool:
    lowered = name.strip().lower()
    return lowered in PROTECTED_HEADERS or gateway_headers.is_own(lowered)


@dataclass(frozen=True, slots=True)
class DirectoryNames:
    """What the directory holds, as far as rules can name it: members and back offices per portfolio."""

    members: Mapping[str, frozenset[str]] = field(default_factory=dict)
    backoffices: Mapping[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Where:
    """Where something stands in a rules file; printed as ``FILE:LINE:COL`` (1-based)."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


NOWHERE = Where("<rules>", 1, 1)


# --- patterns ----------------------------------------------------------------------------------------------


class PatternKind(enum.StrEnum):
    EXACT = "exact"
    GLOB = "glob"
    REGEX = "regex"


@dataclass(frozen=True, slots=True)
class Pattern:
    """One value test: exact text, a shell-style glob, or a regular expression.

    Building one with an invalid regex raises ``re.error``; the file reader turns it into a problem.
    """

    kind: PatternKind
    text: str
    ignore_case: bool = False
    compiled: re.Pattern[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        flags = re.IGNORECASE if self.ignore_case else 0
        if self.kind is PatternKind.EXACT:
            source = re.escape(self.text)
        elif self.kind is PatternKind.GLOB:
            # fnmatch.translate gives a whole-value pattern (it ends in \Z); [...] and ? as in a shell.
            source = fnmatch.translate(self.text)
        else:
            source = self.text
        object.__setattr__(self, "compiled", re.compile(source, flags))

    def match(self, value: str) -> dict[str, str] | None:
        """The named groups that took part (possibly none) if ``value`` matches; None if it does not."""
        if self.kind is PatternKind.REGEX:
            found = self.compiled.search(value)
        else:
            found = self.compiled.fullmatch(value)
        if found is None:
            return None
        return {name: text for name, text in found.groupdict().items() if text is not None}

    @property
    def groups(self) -> frozenset[str]:
        return frozenset(self.compiled.groupindex)

    def describe(self) -> str:
        shown = _quote(self.text)
        text = shown if self.kind is PatternKind.EXACT else f"{self.kind.value} {shown}"
        return text + (" (any case)" if self.ignore_case else "")

    @property
    def matches_everything(self) -> bool:
        """True when no value can fail it: the glob ``*``, or a regex that can match the empty string
        anywhere without anchors (``""``, ``.*``). Used to find rules nothing can reach."""
        if self.kind is PatternKind.GLOB:
            return self.text != "" and set(self.text) == {"*"}
        if self.kind is PatternKind.REGEX:
            return self.text in ("", ".*", "(?s).*", ".*?")
        return False


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- the message as the rules see it ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submitted:
    """The facts of one submission the rules can match on.

    ``headers`` are (name, decoded value) in the order of the message; ``backoffice`` is the name of the
    authenticated back office ("" when none); ``listener`` names the listener ("submission", "mx").
    """

    sender: str
    recipients: tuple[str, ...]
    subject: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    backoffice: str = ""
    listener: str = "submission"
    size: int = 0


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower() if "@" in address else ""


class FieldName(enum.StrEnum):
    """What a field test looks at."""

    SENDER = "sender"
    SENDER_DOMAIN = "sender_domain"
    RECIPIENT = "recipient"
    RECIPIENT_DOMAIN = "recipient_domain"
    SUBJECT = "subject"
    HEADER = "header"
    BACKOFFICE = "backoffice"
    LISTENER = "listener"

    @property
    def lowered(self) -> bool:
        """Addresses, domains, names of back offices and listeners are compared in lower case."""
        return self not in (FieldName.SUBJECT, FieldName.HEADER)

    @property
    def always_present(self) -> bool:
        """Every submission has exactly one value or, for recipients, at least one."""
        return self is not FieldName.HEADER


# --- conditions ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of one condition: matched or not, the named groups it defined, and why, in words."""

    matched: bool
    groups: Mapping[str, str]
    why: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FieldTest:
    """``field`` (for ``header``: the header ``header``) matches ``pattern``; for recipients and for a
    header that occurs more than once, any one value matching is enough (the first one gives the groups)."""

    field: FieldName
    pattern: Pattern
    where: Where = NOWHERE
    header: str = ""

    def values(self, message: Submitted) -> tuple[str, ...]:
        f = self.field
        if f is FieldName.SENDER:
            return (message.sender.lower(),)
        if f is FieldName.SENDER_DOMAIN:
            return (_domain(message.sender),)
        if f is FieldName.RECIPIENT:
            return tuple(r.lower() for r in message.recipients)
        if f is FieldName.RECIPIENT_DOMAIN:
            return tuple(dict.fromkeys(_domain(r) for r in message.recipients))
        if f is FieldName.SUBJECT:
            return (message.subject,)
        if f is FieldName.BACKOFFICE:
            return (message.backoffice.lower(),)
        if f is FieldName.LISTENER:
            return (message.listener.lower(),)
        wanted = self.header.lower()
        return tuple(value for name, value in message.headers if name.lower() == wanted)

    def label(self) -> str:
        return f"header {self.header}" if self.field is FieldName.HEADER else self.field.value


@dataclass(frozen=True, slots=True)
class SizeTest:
    """The message is larger than ``over`` bytes and/or smaller than ``under`` bytes."""

    over: int | None = None
    under: int | None = None
    where: Where = NOWHERE


@dataclass(frozen=True, slots=True)
class AllOf:
    """Every condition holds; ``AllOf(())`` holds for every message (the explicit catch-all)."""

    conditions: tuple[Condition, ...]
    where: Where = NOWHERE


@dataclass(frozen=True, slots=True)
class AnyOf:
    """At least one condition holds (the first that does gives the groups)."""

    conditions: tuple[Condition, ...]
    where: Where = NOWHERE


@dataclass(frozen=True, slots=True)
class NotOf:
    """The condition does not hold; groups inside are never available to actions."""

    condition: Condition
    where: Where = NOWHERE


Condition: TypeAlias = FieldTest | SizeTest | AllOf | AnyOf | NotOf

_NO_GROUPS: Mapping[str, str] = MappingProxyType({})


def check(condition: Condition, message: Submitted) -> Check:
    """Whether ``condition`` holds for ``message``, with the groups it defines and the reasons."""
    if isinstance(condition, FieldTest):
        return _check_field(condition, message)
    if isinstance(condition, SizeTest):
        return _check_size(condition, message)
    if isinstance(condition, NotOf):
        inner = check(condition.condition, message)
        return Check(not inner.matched, _NO_GROUPS, tuple(f"not: {w}" for w in inner.why))
    if isinstance(condition, AllOf):
        groups: dict[str, str] = {}
        why: list[str] = []
        for part in condition.conditions:
            result = check(part, message)
            why += result.why
            if not result.matched:
                return Check(False, _NO_GROUPS, tuple(why))
            # An earlier condition's group of the same name wins, like the first hit among rules.
            groups = dict(result.groups) | groups
        if not condition.conditions:
            why.append("matches every message")
        return Check(True, MappingProxyType(groups), tuple(why))
    why = []
    for part in condition.conditions:
        result = check(part, message)
        why += result.why
        if result.matched:
            return Check(True, result.groups, tuple(why))
    return Check(False, _NO_GROUPS, tuple(why) or ("any: no alternatives",))


def _check_field(test: FieldTest, message: Submitted) -> Check:
    values = test.values(message)
    label = test.label()
    if not values:
        return Check(False, _NO_GROUPS, (f"{label}: not in the message",))
    for value in values:
        groups = test.pattern.match(value)
        if groups is not None:
            extra = ""
            if groups:
                extra = " (" + ", ".join(f"{k}={v}" for k, v in sorted(groups.items())) + ")"
            return Check(
                True,
                MappingProxyType(groups),
                (f"{label} {_quote(value)} matches {test.pattern.describe()}{extra}",),
            )
    shown = ", ".join(_quote(v) for v in values[:5]) + (", …" if len(values) > 5 else "")
    return Check(False, _NO_GROUPS, (f"{label} {shown} does not match {test.pattern.describe()}",))


def _check_size(test: SizeTest, message: Submitted) -> Check:
    size = message.size
    bounds = []
    ok = True
    if test.over is not None:
        bounds.append(f"over {test.over}")
        ok = ok and size > test.over
    if test.under is not None:
        bounds.append(f"under {test.under}")
        ok = ok and size < test.under
    verb = "is" if ok else "is not"
    return Check(ok, _NO_GROUPS, (f"size {size} bytes {verb} {' and '.join(bounds) or 'any size'}",))


def always_matches(condition: Condition) -> bool:
    """True when ``condition`` holds for every possible submission (a catch-all).

    Conservative: True only for shapes that certainly match everything (``{}``, ``sender: {glob: "*"}``,
    a size test without bounds, ``any`` with such a member, ``not`` of a test that never holds is not
    recognised). A False answer proves nothing.
    """
    if isinstance(condition, FieldTest):
        return condition.field.always_present and condition.pattern.matches_everything
    if isinstance(condition, SizeTest):
        return condition.over is None and condition.under is None
    if isinstance(condition, AllOf):
        return all(always_matches(c) for c in condition.conditions)
    if isinstance(condition, AnyOf):
        return any(always_matches(c) for c in condition.conditions)
    return False


def defined_groups(condition: Condition) -> frozenset[str]:
    """Every named group a hit of ``condition`` may define (groups under ``not`` never are)."""
    if isinstance(condition, FieldTest):
        return condition.pattern.groups
    if isinstance(condition, AllOf | AnyOf):
        return frozenset().union(*(defined_groups(c) for c in condition.conditions))
    return frozenset()


# --- templates ---------------------------------------------------------------------------------------------


class InvalidTemplate(ValueError):
    """A value with ``{…}`` placeholders that are not plain group names."""


def template_fields(template: str) -> tuple[str, ...]:
    """The group names ``template`` uses (``"claim-{claim_no}"`` -> ``("claim_no",)``); ``{{`` and ``}}``
    stand for braces. Raises InvalidTemplate for anything but ``{name}``."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InvalidTemplate(f"{exc}; write {{{{ and }}}} for a brace") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise InvalidTemplate(f"{{{name}{'!' + conversion if conversion else ''}}} is not a group name")
        names.append(name)
    return tuple(dict.fromkeys(names))


def render_template(template: str, groups: Mapping[str, str]) -> str | None:
    """``template`` with its groups filled in; None when a group it uses did not take part in the match."""
    if any(name not in groups for name in template_fields(template)):
        return None
    return template.format_map(dict(groups))


# --- rules -------------------------------------------------------------------------------------------------


class Verdict(enum.StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"
    QUARANTINE = "quarantine"


class InvalidAnswer(ValueError):
    """An SMTP answer a rule cannot give."""


_STATUS = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})")


@dataclass(frozen=True, slots=True)
class Answer:
    """An SMTP reply a reject rule gives at the end of DATA: code, enhanced status code, text."""

    code: int
    status: str
    text: str

    def __post_init__(self) -> None:
        if not 400 <= self.code <= 599:
            raise InvalidAnswer(
                f"a rejection's code is 4xx (try again later) or 5xx (refused), not {self.code}"
            )
        found = _STATUS.fullmatch(self.status)
        if found is None:
            raise InvalidAnswer(
                f"the enhanced status code {self.status!r} is not of the form 5.7.1 (RFC 3463)"
            )
        if int(found.group(1)) != self.code // 100:
            raise InvalidAnswer(
                f"the enhanced status code {self.status} is of class {found.group(1)}, "
                f"the code {self.code} of class {self.code // 100}; they must agree"
            )
        if not self.text.strip() or any(not (" " <= ch <= "~") for ch in self.text) or len(self.text) > 400:
            raise InvalidAnswer("the text is one line of printable ASCII, at most 400 characters")

    @property
    def temporary(self) -> bool:
        return self.code < 500

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"


@dataclass(frozen=True, slots=True)
class AddedParticipant:
    """A member a rule adds as a participant of every message it routes, in To or in Cc."""

    address: str
    role: str = "cc"


@dataclass(frozen=True, slots=True)
class Rule:
    """One named rule: a condition and what to do with the messages it matches."""

    name: str
    match: Condition
    where: Where = NOWHERE
    portfolio: str | None = None
    vorgang_key: str | None = None
    participants: tuple[AddedParticipant, ...] = ()
    set_headers: tuple[tuple[str, str], ...] = ()
    strip_headers: tuple[str, ...] = ()
    verdict: Verdict | None = None
    answer: Answer | None = None  # for REJECT
    reason: str = ""  # for QUARANTINE: what an admin is told
    stop: bool | None = None  # None: stop when the rule has a verdict

    @property
    def stops(self) -> bool:
        return self.verdict is not None if self.stop is None else self.stop

    def label(self) -> str:
        """``claims (rules/10-claims.yaml:4:5)``: how records and output name a rule."""
        return f"{self.name} ({self.where})"


def unreachable(rules: Sequence[Rule]) -> list[tuple[Rule, Rule]]:
    """Rules that can never be tried, each with the catch-all rule before it that stops every message."""
    found: list[tuple[Rule, Rule]] = []
    blocker: Rule | None = None
    for rule in rules:
        if blocker is not None:
            found.append((rule, blocker))
        elif rule.stops and always_matches(rule.match):
            blocker = rule
    return found


@dataclass(frozen=True, slots=True)
class Hit:
    rule: Rule
    groups: Mapping[str, str]
    why: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Miss:
    rule: Rule
    why: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    """What the rules decided for one message, and which rules decided it."""

    rule_set: str
    hits: tuple[Hit, ...] = ()
    misses: tuple[Miss, ...] = ()
    verdict: Verdict = Verdict.ACCEPT
    decided_by: Rule | None = None
    answer: Answer | None = None
    reason: str = ""
    portfolio: str | None = None
    vorgang_key: str | None = None
    participants: tuple[AddedParticipant, ...] = ()
    set_headers: tuple[tuple[str, str], ...] = ()
    strip_headers: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def routed_by(self) -> list[str]:
        """The rules that matched, as ``name (file:line:col)``, for the event log."""
        return [hit.rule.label() for hit in self.hits]

    @property
    def copy_headers(self) -> CopyHeaders:
        return CopyHeaders(self.set_headers, self.strip_headers)


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The rules in force, and a digest over the files they came from (recorded with each message)."""

    rules: tuple[Rule, ...] = ()
    digest: str = "none"
    files: tuple[str, ...] = ()

    @property
    def needs_headers(self) -> bool:
        """Whether any rule looks at a header other than the subject (so the caller must read them)."""
        return any(_uses_headers(rule.match) for rule in self.rules)

    def decide(self, message: Submitted) -> Decision:
        """Run the rules over ``message`` in order; see the module docstring for how hits combine."""
        hits: list[Hit] = []
        misses: list[Miss] = []
        notes: list[str] = []
        verdict: Verdict | None = None
        decided_by: Rule | None = None
        answer: Answer | None = None
        reason = ""
        portfolio: str | None = None
        key: str | None = None
        participants: dict[str, AddedParticipant] = {}
        headers: dict[str, tuple[str, str]] = {}
        strip: dict[str, str] = {}
        for rule in self.rules:
            result = check(rule.match, message)
            if not result.matched:
                misses.append(Miss(rule, result.why))
                continue
            hits.append(Hit(rule, result.groups, result.why))
            if rule.portfolio is not None:
                if portfolio is None:
                    portfolio = rule.portfolio
                elif rule.portfolio != portfolio:
                    notes.append(f"{rule.label()}: portfolio {rule.portfolio} ignored; already {portfolio}")
            if rule.vorgang_key is not None and key is None:
                rendered = render_template(rule.vorgang_key, result.groups)
                if rendered is None:
                    missing = [n for n in template_fields(rule.vorgang_key) if n not in result.groups]
                    notes.append(
                        f"{rule.label()}: vorgang_key needs {', '.join(missing)}, "
                        "which did not match; not keyed"
                    )
                elif not rendered.strip() or len(rendered) > MAX_KEY_LENGTH:
                    notes.append(
                        f"{rule.label()}: vorgang_key {rendered[:60]!r} is empty or longer than "
                        f"{MAX_KEY_LENGTH} characters; not keyed"
                    )
                else:
                    key = rendered.strip()
            for added in rule.participants:
                participants.setdefault(added.address, added)
            for name, template in rule.set_headers:
                value = render_template(template, result.groups)
                if value is None:
                    notes.append(f"{rule.label()}: header {name} needs a group that did not match; not set")
                else:
                    headers.setdefault(name.lower(), (name, value))
            for name in rule.strip_headers:
                strip.setdefault(name.lower(), name)
            if rule.verdict is not None and verdict is None:
                verdict, decided_by = rule.verdict, rule
                answer = rule.answer
                reason = render_template(rule.reason, result.groups) or rule.reason
            if rule.stops:
                break
        return Decision(
            rule_set=self.digest,
            hits=tuple(hits),
            misses=tuple(misses),
            verdict=verdict or Verdict.ACCEPT,
            decided_by=decided_by,
            answer=answer,
            reason=reason,
            portfolio=portfolio,
            vorgang_key=key,
            participants=tuple(participants.values()),
            set_headers=tuple(headers.values()),
            # A header a rule sets is not stripped again by a later rule's strip.
            strip_headers=tuple(v for k, v in strip.items() if k not in headers),
            notes=tuple(notes),
        )


def _uses_headers(condition: Condition) -> bool:
    if isinstance(condition, FieldTest):
        return condition.field is FieldName.HEADER
    if isinstance(condition, AllOf | AnyOf):
        return any(_uses_headers(c) for c in condition.conditions)
    if isinstance(condition, NotOf):
        return _uses_headers(condition.condition)
    return False


EMPTY_RULE_SET = RuleSet()


@dataclass(frozen=True, slots=True)
class CopyHeaders:
    """What rules change on every copy of a message: headers set (replacing any of that name) and
    headers stripped. Stored with the message as JSON, applied when a copy is rendered."""

    set: tuple[tuple[str, str], ...] = ()
    strip: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set or self.strip)

    def to_json(self) -> dict[str, list[Any]]:
        return {"set": [list(pair) for pair in self.set], "strip": list(self.strip)}

    @classmethod
    def from_json(cls, data: object) -> CopyHeaders:
        """What :meth:`to_json` wrote; anything else (None, a foreign shape) means no changes."""
        if not isinstance(data, dict):
            return cls()
        pairs = data.get("set") or []
        strip = data.get("strip") or []
        return cls(
            tuple((str(p[0]), str(p[1])) for p in pairs if isinstance(p, list | tuple) and len(p) == 2),
            tuple(str(name) for name in strip),
        )


def route_participants(
    recipients: Sequence[str],
    cc: Collection[str],
    members: Mapping[str, int],
    added: Sequence[AddedParticipant] = (),
    *,
    to: Collection[str] | None = None,
) -> tuple[list[Participant], list[str]]:
    """The participants of a submitted message: each recipient who is a member, then the members rules
    add who are not participants already; and the addresses of added participants who are no members
    of the portfolio (left out).

    A recipient is in Cc if the message names it in Cc, in To if in To, and otherwise a blind (Bcc)
    participant, who sees the message but brings no co-member in (DESIGN.md §3). Without ``to`` (the
    header's To addresses), every recipient not in Cc counts as To.
    """
    to_named = None if to is None else _normalised(to)
    cc_named = _normalised(cc)

    def role(address: str) -> ParticipantRole:
        if address in cc_named:
            return ParticipantRole.CC
        if to_named is None or address in to_named:
            return ParticipantRole.TO
        return ParticipantRole.BCC

    found = [Participant(members[a], role(a)) for a in dict.fromkeys(recipients) if a in members]
    present = {p.member_id for p in found}
    skipped: list[str] = []
    for extra in added:
        member_id = members.get(extra.address)
        if member_id is None:
            skipped.append(extra.address)
        elif member_id not in present:
            present.add(member_id)
            found.append(Participant(member_id, ParticipantRole(extra.role)))
    return found, skipped


def digest_of(files: Iterable[tuple[str, bytes]]) -> str:
    """A short hash over the rules files' names and bytes: which rule set routed a message."""
    h = hashlib.sha256()
    for name, data in files:
        h.update(name.encode("utf-8") + b"\0" + len(data).to_bytes(8, "big") + data)
    return h.hexdigest()[:16]


def _normalised(addresses: Collection[str]) -> frozenset[str]:
    """Header addresses in the form RCPT addresses are kept in (an invalid one as written, lowered)."""
    found: set[str] = set()
    for address in addresses:
        try:
            found.add(normalise_address(address))
        except InvalidAddress:
            found.add(address.strip().lower())
    return frozenset(found)
