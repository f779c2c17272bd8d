"""Reads the routing rules files (``rules/*.yaml``) into a checked rule set, with ``FILE:LINE:COL`` problems.

Files are read as YAML node trees, as ``gateway.admin.directory_file`` does, so that every problem (an unknown
key, a bad regex, a template naming a group no regex defines, an SMTP answer that is no answer, a rule
nothing can reach) is reported with its line and column, all of them at once, and a rule set is only
ever built from files that are valid as a whole. The format is documented in docs/rules.md::

    version: 1
    rules:
      - name: claims
        match:
          subject: {regex: 'Schaden(?:nummer)?[ :]*(?P<claim_no>[0-9]{4,})', ignore_case: true}
        vorgang_key: "claim-{claim_no}"

Names of portfolios, members and back offices are checked against the directory in the database by
:func:`directory_problems`, which the ``rules check`` command and the running gateway call with what the
database holds; this module itself does no I/O beyond reading the files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from gateway.domain.addresses import InvalidAddress, normalise_address
from gateway.domain.rules import (
    AddedParticipant,
    AllOf,
    Answer,
    AnyOf,
    Condition,
    DirectoryNames,
    FieldName,
    FieldTest,
    InvalidAnswer,
    InvalidTemplate,
    NotOf,
    Pattern,
    PatternKind,
    Rule,
    RuleSet,
    SizeTest,
    Verdict,
    Where,
    defined_groups,
    digest_of,
    is_protected_header,
    template_fields,
    unreachable,
)
from gateway.errors import Problem, RulesFileError

__all__ = [
    "FORMAT_VERSION",
    "LoadedRules",
    "Reference",
    "directory_problems",
    "load_rules",
    "parse_rules",
    "rules_files",
]

FORMAT_VERSION = 1
_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_HEADER_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")
_SIZE = re.compile(r"^\s*(\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "kib": 1024, "mib": 1024**2, "gib": 1024**3}

RULE_KEYS = (
    "name",
    "match",
    "portfolio",
    "vorgang_key",
    "participants",
    "set_headers",
    "strip_headers",
    "accept",
    "reject",
    "quarantine",
    "then",
)
PATTERN_FIELDS = {f.value: f for f in FieldName if f is not FieldName.HEADER}
MATCH_KEYS = (*PATTERN_FIELDS, "header", "size", "all", "any", "not")


@dataclass(frozen=True, slots=True)
class Reference:
    """A name in a rules file that must exist in the directory: a portfolio, a member or a back office.

    ``portfolio`` is the portfolio a member must belong to (the rule's own), or None for any portfolio.
    """

    kind: str  # "portfolio" | "member" | "backoffice"
    name: str
    where: Where
    portfolio: str | None = None


@dataclass(frozen=True, slots=True)
class LoadedRules:
    """A valid rule set and the names in it that the directory has to know."""

    rule_set: RuleSet
    references: tuple[Reference, ...] = ()


class _Reader:
    """Collects problems while turning one file's YAML nodes into rules."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.problems: list[tuple[Where, str]] = []
        self.references: list[Reference] = []

    def where(self, node: yaml.Node) -> Where:
        return Where(self.name, node.start_mark.line + 1, node.start_mark.column + 1)

    def fail(self, node: yaml.Node, reason: str) -> None:
        self.problems.append((self.where(node), reason))

    def mapping(
        self, node: yaml.Node, what: str, allowed: Sequence[str], required: Sequence[str] = ()
    ) -> dict[str, yaml.Node] | None:
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, f"{what} must be a mapping of keys to values")
            return None
        found: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
            if key is None or key not in allowed:
                self.fail(key_node, f"unknown key {key!r} in {what} (known keys: {', '.join(allowed)})")
            elif key in found:
                self.fail(key_node, f"key {key!r} appears twice in {what}")
            else:
                found[key] = value_node
        for key in required:
            if key not in found:
                self.fail(node, f"{what} lacks the required key {key!r}")
        return found

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if isinstance(node, yaml.ScalarNode) and node.tag == _NULL:
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, f"{what} must be a list")
            return []
        return list(node.value)

    def text(self, node: yaml.Node, what: str) -> str | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag == _NULL:
            self.fail(node, f"{what} must be a text value")
            return None
        return str(node.value)

    def flag(self, node: yaml.Node, what: str) -> bool | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == _BOOL:
            return bool(yaml.safe_load(node.value))
        self.fail(node, f"{what} must be true or false")
        return None


def parse_rules(text: str, name: str = "<rules>") -> tuple[list[Rule], list[Reference], list[Problem]]:
    """The rules of one file, the directory names they use, and every problem found in it."""
    reader = _Reader(name)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = Where(name, mark.line + 1, mark.column + 1) if mark is not None else Where(name, 1, 1)
        problem = getattr(exc, "problem", None) or str(exc)
        return [], [], [Problem(str(where), f"YAML syntax: {problem}")]
    if root is None:
        return [], [], []  # an empty file is no rules, not a mistake (a file emptied to switch rules off)
    rules: list[Rule] = []
    top = reader.mapping(root, "a rules file", ("version", "rules"), ("rules",))
    if top is not None:
        if "version" in top and reader.text(top["version"], "version") != str(FORMAT_VERSION):
            reader.fail(top["version"], f"unsupported version; this gateway reads version {FORMAT_VERSION}")
        if "rules" in top:
            for node in reader.sequence(top["rules"], "rules"):
                rule = _rule(reader, node)
                if rule is not None:
                    rules.append(rule)
    problems = [Problem(str(where), reason) for where, reason in reader.problems]
    return rules, reader.references, problems


def rules_files(directory: Path) -> list[Path]:
    """The rules files of ``directory`` in the order they are loaded: ``*.yaml`` and ``*.yml`` by name,
    leaving out hidden files (editors' backups and locks start with a dot)."""
    if not directory.is_dir():
        return []
    return sorted(
        (p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def load_rules(directory: Path, *, snapshot: Sequence[tuple[Path, bytes]] | None = None) -> LoadedRules:
    """Read and check every rules file of ``directory``; raise :class:`RulesFileError` listing every
    problem of every file, so that a rule set is built only from files that are all valid.

    ``snapshot`` gives the files' bytes already read (the reloader reads them once to compare).
    A directory that does not exist holds no rules: the gateway then routes as it does without rules.
    """
    files = list(snapshot) if snapshot is not None else read_files(directory)
    rules: list[Rule] = []
    references: list[Reference] = []
    problems: list[Problem] = []
    for path, data in files:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            problems.append(Problem(f"{path}:{line}:1", "the file is not UTF-8 text"))
            continue
        found, refs, trouble = parse_rules(text, str(path))
        rules += found
        references += refs
        problems += trouble
    seen: dict[str, Rule] = {}
    for rule in rules:
        if rule.name in seen:
            problems.append(
                Problem(
                    str(rule.where),
                    f"a rule named {rule.name!r} exists already at {seen[rule.name].where}",
                )
            )
        else:
            seen[rule.name] = rule
    for rule, blocker in unreachable(rules):
        problems.append(
            Problem(
                str(rule.where),
                f"rule {rule.name!r} is never reached: rule {blocker.name!r} at {blocker.where} "
                "matches every message and stops",
            )
        )
    if problems:
        count = len(problems)
        raise RulesFileError(
            f"the rules in {directory} have {count} problem{'s' if count != 1 else ''}",
            sorted(problems, key=_position),
        )
    rule_set = RuleSet(
        tuple(rules), digest_of((p.name, d) for p, d in files), tuple(str(p) for p, _ in files)
    )
    return LoadedRules(rule_set, tuple(references))


def read_files(directory: Path) -> list[tuple[Path, bytes]]:
    """The bytes of every rules file, in load order; an unreadable file is a problem of its own."""
    found: list[tuple[Path, bytes]] = []
    unreadable: list[Problem] = []
    for path in rules_files(directory):
        try:
            found.append((path, path.read_bytes()))
        except OSError as exc:
            unreadable.append(Problem(f"{path}:1:1", f"cannot be read: {exc.strerror or exc}"))
    if unreadable:
        raise RulesFileError(f"the rules in {directory} cannot be read", unreadable)
    return found


def _position(problem: Problem) -> tuple[str, int, int]:
    file, _, rest = problem.where.rpartition(":")
    file, _, line = file.rpartition(":")
    try:
        return (file, int(line), int(rest))
    except ValueError:
        return (problem.where, 0, 0)


def directory_problems(references: Sequence[Reference], directory: DirectoryNames) -> list[Problem]:
    """Names the rules use that the directory does not know, as ``FILE:LINE:COL`` problems."""
    problems: list[Problem] = []
    for ref in references:
        if ref.kind == "portfolio" and ref.name not in directory.members:
            known = ", ".join(sorted(directory.members)) or "none"
            problems.append(Problem(str(ref.where), f"there is no portfolio {ref.name} (known: {known})"))
        elif ref.kind == "member":
            if ref.portfolio is not None:
                if ref.portfolio in directory.members and ref.name not in directory.members[ref.portfolio]:
                    problems.append(
                        Problem(str(ref.where), f"there is no member {ref.name} in portfolio {ref.portfolio}")
                    )
            elif not any(ref.name in members for members in directory.members.values()):
                problems.append(Problem(str(ref.where), f"there is no member {ref.name} in any portfolio"))
        elif ref.kind == "backoffice" and not any(
            ref.name in names for names in directory.backoffices.values()
        ):
            problems.append(Problem(str(ref.where), f"there is no back office {ref.name} in any portfolio"))
    return problems


# --- one rule ----------------------------------------------------------------------------------------------


def _rule(reader: _Reader, node: yaml.Node) -> Rule | None:
    keys = reader.mapping(node, "a rule", RULE_KEYS, ("name", "match"))
    if keys is None or "name" not in keys or "match" not in keys:
        return None
    name = (reader.text(keys["name"], "a rule's name") or "").strip()
    if "name" in keys and not name and isinstance(keys["name"], yaml.ScalarNode):
        reader.fail(keys["name"], "a rule's name must not be empty")
    before = len(reader.problems)
    condition = _condition(reader, keys["match"], "match")
    # None when the match itself has problems: its groups are unknown, so templates are not judged by them.
    groups = defined_groups(condition) if condition is not None else None

    portfolio: str | None = None
    if "portfolio" in keys:
        portfolio = reader.text(keys["portfolio"], "portfolio")
        if portfolio is not None:
            portfolio = portfolio.strip()
            reader.references.append(Reference("portfolio", portfolio, reader.where(keys["portfolio"])))

    vorgang_key = None
    if "vorgang_key" in keys:
        vorgang_key = _template(reader, keys["vorgang_key"], "vorgang_key", groups)

    participants = tuple(
        p
        for p in (_participant(reader, n, portfolio) for n in _listed(reader, keys, "participants"))
        if p is not None
    )
    set_headers: list[tuple[str, str]] = []
    if "set_headers" in keys:
        for key_node, value_node in _pairs(reader, keys["set_headers"], "set_headers"):
            header = _header_name(reader, key_node, "set_headers")
            value = _template(reader, value_node, f"the value of header {header}", groups)
            if header is not None and value is not None:
                if any(ch in value for ch in "\r\n\0"):
                    reader.fail(value_node, "a header value is one line")
                else:
                    set_headers.append((header, value))
    strip_headers = tuple(
        h
        for h in (_header_name(reader, n, "strip_headers") for n in _listed(reader, keys, "strip_headers"))
        if h is not None
    )

    verdict, answer, reason = _verdict(reader, node, keys, groups)
    stop: bool | None = None
    if "then" in keys:
        then = reader.text(keys["then"], "then")
        if then in ("stop", "continue"):
            stop = then == "stop"
        elif then is not None:
            reader.fail(keys["then"], f"then must be stop or continue, not {then!r}")
    if condition is None or len(reader.problems) > before or not name:
        return None
    return Rule(
        name=name,
        match=condition,
        where=reader.where(node),
        portfolio=portfolio,
        vorgang_key=vorgang_key,
        participants=participants,
        set_headers=tuple(set_headers),
        strip_headers=strip_headers,
        verdict=verdict,
        answer=answer,
        reason=reason,
        stop=stop,
    )


def _pairs(reader: _Reader, node: yaml.Node, what: str) -> list[tuple[yaml.Node, yaml.Node]]:
    """The entries of a mapping whose keys are free (header names), each name once in any case."""
    if not isinstance(node, yaml.MappingNode):
        reader.fail(node, f"{what} must be a mapping of header names to values")
        return []
    seen: set[str] = set()
    pairs = []
    for key_node, value_node in node.value:
        name = str(key_node.value).lower() if isinstance(key_node, yaml.ScalarNode) else ""
        if name in seen:
            reader.fail(key_node, f"header {key_node.value} appears twice in {what}")
            continue
        seen.add(name)
        pairs.append((key_node, value_node))
    return pairs


def _listed(reader: _Reader, keys: Mapping[str, yaml.Node], key: str) -> list[yaml.Node]:
    if key not in keys:
        return []
    node = keys[key]
    if isinstance(node, yaml.ScalarNode) and node.tag != _NULL:
        return [node]  # one value without a list around it
    return reader.sequence(node, key)


def _verdict(
    reader: _Reader, node: yaml.Node, keys: Mapping[str, yaml.Node], groups: frozenset[str] | None
) -> tuple[Verdict | None, Answer | None, str]:
    given = [k for k in ("accept", "reject", "quarantine") if k in keys]
    if len(given) > 1:
        reader.fail(keys[given[1]], f"a rule has one verdict; this one has {' and '.join(given)}")
        return None, None, ""
    if not given:
        return None, None, ""
    key = given[0]
    value = keys[key]
    if key == "accept":
        flag = reader.flag(value, "accept")
        if flag is False:
            reader.fail(value, "accept: false means nothing; leave the key out")
        return (Verdict.ACCEPT if flag else None), None, ""
    if key == "quarantine":
        if isinstance(value, yaml.ScalarNode) and value.tag == _BOOL:
            if not reader.flag(value, "quarantine"):
                reader.fail(value, "quarantine: false means nothing; leave the key out")
            return Verdict.QUARANTINE, None, ""
        reason = _template(reader, value, "quarantine (the reason an admin is shown)", groups)
        return Verdict.QUARANTINE, None, reason or ""
    answer_keys = reader.mapping(value, "reject", ("code", "status", "text"), ("code", "status", "text"))
    if answer_keys is None or len(answer_keys) < 3:
        return None, None, ""
    code_node = answer_keys["code"]
    if not (isinstance(code_node, yaml.ScalarNode) and code_node.tag == _INT):
        reader.fail(code_node, "code must be a three-digit number such as 550")
        return None, None, ""
    status = reader.text(answer_keys["status"], "status")
    text = reader.text(answer_keys["text"], "text")
    if status is None or text is None:
        return None, None, ""
    try:
        answer = Answer(int(code_node.value), status.strip(), text.strip())
    except InvalidAnswer as exc:
        reader.fail(value, str(exc))
        return None, None, ""
    return Verdict.REJECT, answer, ""


def _template(reader: _Reader, node: yaml.Node, what: str, groups: frozenset[str] | None) -> str | None:
    text = reader.text(node, what)
    if text is None:
        return None
    try:
        names = template_fields(text)
    except InvalidTemplate as exc:
        reader.fail(node, f"{what}: {exc}")
        return None
    unknown = [n for n in names if groups is not None and n not in groups]
    if unknown and groups is not None:
        defined = ", ".join(sorted(groups)) or "none"
        reader.fail(
            node,
            f"{what} uses {', '.join('{' + n + '}' for n in unknown)}, which no regex of this rule's "
            f"match defines outside a 'not' (named groups defined: {defined})",
        )
        return None
    return text


def _participant(reader: _Reader, node: yaml.Node, portfolio: str | None) -> AddedParticipant | None:
    role = "cc"
    address_node = node
    if isinstance(node, yaml.MappingNode):
        keys = reader.mapping(node, "a participant", ("address", "role"), ("address",))
        if keys is None or "address" not in keys:
            return None
        address_node = keys["address"]
        if "role" in keys:
            given = reader.text(keys["role"], "role")
            if given not in ("to", "cc"):
                reader.fail(keys["role"], f"role must be to or cc, not {given!r}")
                return None
            role = given
    text = reader.text(address_node, "a participant's address")
    if text is None:
        return None
    try:
        address = normalise_address(text)
    except InvalidAddress as exc:
        reader.fail(address_node, f"participant: {exc}")
        return None
    reader.references.append(Reference("member", address, reader.where(address_node), portfolio))
    return AddedParticipant(address, role)


def _header_name(reader: _Reader, node: yaml.Node, what: str) -> str | None:
    text = reader.text(node, f"a header name in {what}")
    if text is None:
        return None
    name = text.strip()
    if not _HEADER_NAME.fullmatch(name):
        reader.fail(node, f"{name!r} is not a header name (printable ASCII without spaces or colons)")
        return None
    if is_protected_header(name):
        reader.fail(
            node,
            f"{what} cannot change {name}: the gateway's own headers and the reply path are not for rules",
        )
        return None
    return name


# --- conditions --------------------------------------------------------------------------------------------


def _condition(reader: _Reader, node: yaml.Node, what: str) -> Condition | None:
    """A match mapping: its keys are tests that must all hold (``{}`` holds for every message)."""
    before = len(reader.problems)
    keys = reader.mapping(node, what, MATCH_KEYS)
    if keys is None:
        return None
    parts: list[Condition] = []
    ok = len(reader.problems) == before  # an unknown key is no test: the match is not what was meant
    for key, value in keys.items():
        part = _one(reader, key, value)
        if part is None:
            ok = False
        else:
            parts.append(part)
    if not ok:
        return None
    where = reader.where(node)
    return parts[0] if len(parts) == 1 else AllOf(tuple(parts), where)


def _one(reader: _Reader, key: str, node: yaml.Node) -> Condition | None:
    where = reader.where(node)
    if key in ("all", "any"):
        items = reader.sequence(node, key)
        if not items and isinstance(node, yaml.SequenceNode):
            reader.fail(node, f"{key} needs at least one condition")
            return None
        parts = [_condition(reader, item, f"a condition in {key}") for item in items]
        if any(p is None for p in parts) or not items:
            return None
        found = tuple(p for p in parts if p is not None)
        return AllOf(found, where) if key == "all" else AnyOf(found, where)
    if key == "not":
        inner = _condition(reader, node, "not")
        return NotOf(inner, where) if inner is not None else None
    if key == "size":
        return _size(reader, node)
    if key == "header":
        return _header_test(reader, node)
    field_name = PATTERN_FIELDS[key]
    pattern = _pattern(reader, node, key, field_name.lowered)
    if pattern is None:
        return None
    if pattern.kind is PatternKind.EXACT:
        if field_name is FieldName.RECIPIENT:
            reader.references.append(Reference("member", pattern.text.lower(), where))
        elif field_name is FieldName.BACKOFFICE:
            reader.references.append(Reference("backoffice", pattern.text, where))
    return FieldTest(field_name, pattern, where)


_PATTERN_KEYS = ("exact", "glob", "regex", "ignore_case")


def _pattern(reader: _Reader, node: yaml.Node, what: str, lowered: bool) -> Pattern | None:
    """A scalar is an exact value; a mapping names one of exact, glob or regex, and ignore_case."""
    if isinstance(node, yaml.ScalarNode) and node.tag != _NULL:
        return _build(reader, node, PatternKind.EXACT, str(node.value), lowered, what)
    keys = reader.mapping(node, what, _PATTERN_KEYS)
    if keys is None:
        return None
    return _pattern_from(reader, node, keys, what, lowered)


def _pattern_from(
    reader: _Reader, node: yaml.Node, keys: Mapping[str, yaml.Node], what: str, lowered: bool
) -> Pattern | None:
    kinds = [k for k in ("exact", "glob", "regex") if k in keys]
    if len(kinds) != 1:
        reader.fail(node, f"{what} needs exactly one of exact, glob or regex")
        return None
    ignore_case = False
    if "ignore_case" in keys:
        ignore_case = bool(reader.flag(keys["ignore_case"], "ignore_case"))
    value_node = keys[kinds[0]]
    text = reader.text(value_node, kinds[0])
    if text is None:
        return None
    return _build(reader, value_node, PatternKind(kinds[0]), text, lowered or ignore_case, what)


def _build(
    reader: _Reader, node: yaml.Node, kind: PatternKind, text: str, ignore_case: bool, what: str
) -> Pattern | None:
    try:
        return Pattern(kind, text, ignore_case)
    except re.error as exc:
        at = f" at position {exc.pos}" if exc.pos is not None else ""
        reader.fail(node, f"{what}: bad regular expression{at}: {exc.msg}")
        return None


def _header_test(reader: _Reader, node: yaml.Node) -> Condition | None:
    keys = reader.mapping(node, "header", ("name", *_PATTERN_KEYS), ("name",))
    if keys is None or "name" not in keys:
        return None
    name = reader.text(keys["name"], "the header's name")
    if name is None:
        return None
    name = name.strip()
    if not _HEADER_NAME.fullmatch(name):
        reader.fail(keys["name"], f"{name!r} is not a header name")
        return None
    where = reader.where(node)
    if not any(k in keys for k in ("exact", "glob", "regex")):
        # Only a name: the header is present, whatever its value.
        return FieldTest(FieldName.HEADER, Pattern(PatternKind.REGEX, ""), where, name)
    pattern = _pattern_from(reader, node, keys, f"header {name}", False)
    return FieldTest(FieldName.HEADER, pattern, where, name) if pattern is not None else None


def _size(reader: _Reader, node: yaml.Node) -> Condition | None:
    keys = reader.mapping(node, "size", ("over", "under"))
    if keys is None:
        return None
    if not keys:
        reader.fail(node, "size needs over, under or both")
        return None
    bounds: dict[str, int] = {}
    for key, value in keys.items():
        parsed = _bytes(value)
        if parsed is None:
            reader.fail(value, f"size {key} must be a number of bytes or a size such as 10MiB, 512KiB, 2MB")
            return None
        bounds[key] = parsed
    return SizeTest(bounds.get("over"), bounds.get("under"), reader.where(node))


def _bytes(node: yaml.Node) -> int | None:
    if not isinstance(node, yaml.ScalarNode) or node.tag in (_NULL, _BOOL):
        return None
    found = _SIZE.match(str(node.value))
    if found is None or found.group(2).lower() not in _SIZE_UNITS:
        return None
    return int(found.group(1)) * _SIZE_UNITS[found.group(2).lower()]
