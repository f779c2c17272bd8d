"""The routing rules in force in a running gateway: loaded at startup, reloaded when the files change.

``RoutingRules.current`` is the rule set the submission listener decides with (``gateway.domain.rules``).
A reload reads every file of the rules directory, checks them as ``gateway rules check`` does (including
the names they use against the directory in the database) and only then replaces the rule set, in one
assignment: a message is routed by the old rules or by the new ones, never by a mix, and files with a
problem never replace valid ones (DESIGN.md §6). Reloads happen on SIGHUP (``request_reload``) and when a
look at the files every ``reload_interval`` seconds sees their names, sizes or modification times change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.domain.parsing import ParsedMessage, header_fields
from gateway.domain.routing_plan import Refused, rules_refusal
from gateway.domain.rules import EMPTY_RULE_SET, Decision, DirectoryNames, RuleSet, Submitted
from gateway.errors import RulesFileError
from gateway.metrics import Metrics
from gateway.routing.files import directory_problems, load_rules, rules_files
from gateway.smtp_replies import Reply

__all__ = ["RoutingRules", "check_rules", "decide", "refusal", "stored_answer"]

log = logging.getLogger("gateway.routing.live")

Stamp = tuple[tuple[str, int, int], ...]


def decide(
    rule_set: RuleSet,
    *,
    backoffice: str,
    envelope_sender: str,
    recipients: tuple[str, ...],
    raw: bytes,
    parsed: ParsedMessage,
    listener: str,
) -> Decision:
    """What ``rule_set`` decides for one message: the submission listener, ``gateway rules test`` and
    the stage tests all decide through here. Headers are decoded only when a rule tests one."""
    return rule_set.decide(
        Submitted(
            sender=envelope_sender,
            recipients=recipients,
            subject=parsed.subject,
            headers=header_fields(raw) if rule_set.needs_headers else (),
            backoffice=backoffice,
            listener=listener,
            size=len(raw),
        )
    )


def refusal(decision: Decision, portfolio: str) -> str | None:
    """The answer at the end of DATA when the rules refuse the message; None when it is to be stored.

    ``portfolio`` is the one the authenticated back office submits into; whether the rules refuse is
    the routing plan's decision (``gateway.domain.routing_plan.rules_refusal``).
    """
    refused = rules_refusal(decision, portfolio)
    if refused is Refused.BY_RULE:
        assert decision.answer is not None
        return str(decision.answer)
    if refused is Refused.OTHER_PORTFOLIO:
        return Reply.WRONG_PORTFOLIO.with_text(
            f"Routing rules assign this message to portfolio {decision.portfolio}; "
            f"this back office submits into {portfolio}"
        )
    return None


def stored_answer(gateway_id: str, vorgang: str, *, quarantined: bool) -> str:
    """The answer to a message that is stored: in its Vorgang, or held for review by a rule."""
    if quarantined:
        return Reply.QUARANTINED.with_text(f"Accepted as {gateway_id}; held for review")
    return Reply.ACCEPTED.with_text(f"Accepted as {gateway_id} in {vorgang}")


def check_rules(directory: Path, names: DirectoryNames | None) -> RuleSet:
    """The rule set of ``directory`` if every file is valid and (given ``names``) every name it uses
    is in the directory; else :class:`RulesFileError` with every problem."""
    loaded = load_rules(directory)
    if names is not None:
        problems = directory_problems(loaded.references, names)
        if problems:
            count = len(problems)
            raise RulesFileError(
                f"the rules in {directory} name {count} thing{'s' if count != 1 else ''} the directory lacks",
                problems,
            )
    return loaded.rule_set


class RoutingRules:
    """The rule set in force, and the task that reloads it."""

    def __init__(
        self,
        directory: Path,
        *,
        interval: float = 2.0,
        names: Callable[[], Awaitable[DirectoryNames]] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.directory = directory
        self.metrics = metrics or Metrics()
        self.interval = interval
        self.names = names
        self.current: RuleSet = EMPTY_RULE_SET
        self._stamp: Stamp = ()
        self._wake = asyncio.Event()
        self.reloads = 0  # successful loads, for tests and logs
        self.refusals = 0

    async def load(self) -> RuleSet:
        """Load the rules at startup; raises RulesFileError so that the gateway does not start with
        files it cannot read (it would route mail as if they did not exist).

        Names the directory lacks are logged as errors but do not keep the gateway from starting: a
        member deleted from the directory must not turn the next restart into an outage. Such a rule
        simply finds nothing (an unknown participant is left out, mail routed to an unknown portfolio
        is refused); a reload, in contrast, keeps the rules in force until the files are fixed.
        """
        self._stamp = _stamp(self.directory)
        loaded = await asyncio.to_thread(load_rules, self.directory)
        if self.names is not None:
            problems = directory_problems(loaded.references, await self.names())
            if problems:
                log.error(
                    "the rules name %d thing(s) the directory lacks; they match nothing until fixed:%s",
                    len(problems),
                    "".join(f"\n  {p}" for p in problems),
                    extra={"problems": [str(p) for p in problems]},
                )
        self.current = loaded.rule_set
        self.reloads += 1
        self._log_loaded("loaded")
        return self.current

    def request_reload(self) -> None:
        """Reload soon (SIGHUP): also when the files look unchanged, e.g. after the directory changed."""
        self._stamp = ()
        self._wake.set()

    async def reload(self) -> bool:
        """Read and check the files again; True when the new rule set is in force now."""
        self._stamp = _stamp(self.directory)
        try:
            rule_set = await self._check()
        except RulesFileError as exc:
            self.refusals += 1
            self.metrics.rule_reloads.labels("failed").inc()
            log.error(
                "rules not reloaded; rule set %s stays in force: %s%s",
                self.current.digest,
                exc.summary,
                "".join(f"\n  {p}" for p in exc.problems),
                extra={"rule_set": self.current.digest, "problems": [str(p) for p in exc.problems]},
            )
            return False
        except Exception as exc:  # a database hiccup while checking names: keep the rules, try next time
            self.refusals += 1
            self.metrics.rule_reloads.labels("failed").inc()
            self._stamp = ()
            log.error("rules not reloaded; rule set %s stays in force: %s", self.current.digest, exc)
            return False
        changed = rule_set.digest != self.current.digest
        self.current = rule_set
        self.reloads += 1
        self.metrics.rule_reloads.labels("ok").inc()
        self._log_loaded("reloaded" if changed else "reloaded (unchanged)")
        return True

    async def watch(self) -> None:
        """Reload whenever the files change or a reload was requested; runs until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            try:
                stamp = await asyncio.to_thread(_stamp, self.directory)
            except OSError as exc:
                log.warning("cannot look at the rules in %s: %s", self.directory, exc)
                continue
            if stamp != self._stamp:
                await self.reload()

    async def _check(self) -> RuleSet:
        names = await self.names() if self.names is not None else None
        return await asyncio.to_thread(check_rules, self.directory, names)

    def _log_loaded(self, how: str) -> None:
        rules = self.current.rules
        log.info(
            "rules %s: %d rule(s) from %d file(s) in %s, rule set %s",
            how,
            len(rules),
            len(self.current.files),
            self.directory,
            self.current.digest,
            extra={"rule_set": self.current.digest, "rules": [r.name for r in rules]},
        )


def _stamp(directory: Path) -> Stamp:
    """Names, sizes and modification times (ns) of the rules files: what a change shows in."""
    found = []
    for path in rules_files(directory):
        try:
            info = path.stat()
        except OSError:
            continue  # removed between listing and looking; the next look sees it gone
        found.append((path.name, info.st_size, info.st_mtime_ns))
    return tuple(found)
