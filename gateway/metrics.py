"""The gateway's Prometheus instruments: one registry per Service, and the counters, histograms and
gauges the stages move where each event happens.

Gauges of stored state (copies by state, queue sizes, reconcile progress) are not here: they are read
from the database at scrape time (``gateway.db.gauges``, exposed by ``gateway.web.exposition``), so
every node reports the same truth about the shared queues. What is here counts events this process saw.

Each ``Service`` builds its own ``Metrics`` (never prometheus_client's global default registry), so
several gateways in one test process keep their figures apart. Stages built without one get a private
``Metrics`` that nobody scrapes; they never have to ask whether there is one.

Labels are bounded on purpose: a listener name, an SMTP reply code and its enhanced code (never the
text, which names addresses), a result out of a fixed few.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds from accepted to in the mailbox: a healthy gateway answers in well under a second; a mailbox
# that is away for a while shows up in the minutes and hours buckets, where the retries put it.
DELIVERY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)
FLAG_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

_REPLY = re.compile(r"(?P<code>[2-5]\d\d)[ -](?:(?P<enhanced>[2-5]\.\d{1,3}\.\d{1,3})\b)?")


def reply_labels(line: str) -> tuple[str, str]:
    """The reply code and enhanced code of an SMTP reply line ("550", "5.7.1"); never its text."""
    match = _REPLY.match(line)
    if match is None:
        return "other", ""
    return match["code"], match["enhanced"] or ""


class Metrics:
    """The instruments of one gateway process, on a registry of its own (``registry``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages_accepted = Counter(
            "gateway_messages_accepted",
            "Messages answered 2xx at the end of DATA, by listener",
            ["listener"],
            registry=r,
        )
        self.messages_refused = Counter(
            "gateway_messages_refused",
            "Messages answered 4xx or 5xx at the end of DATA, by listener and reply code",
            ["listener", "code", "enhanced"],
            registry=r,
        )
        self.logins_failed = Counter(
            "gateway_logins_failed",
            "Failed logins (wrong password or unknown login), by service: smtp (submission) or console",
            ["service"],
            registry=r,
        )
        self.sessions_open = Gauge(
            "gateway_smtp_sessions_open", "SMTP sessions open now, by listener", ["listener"], registry=r
        )
        self.delivery_latency = Histogram(
            "gateway_delivery_latency_seconds",
            "From a copy queued (its message accepted, or back-filled) to the copy in the mailbox",
            buckets=DELIVERY_BUCKETS,
            registry=r,
        )
        self.copies_written = Counter(
            "gateway_copies_written", "Copies written into members' mailboxes by this process", registry=r
        )
        self.copy_failures = Counter(
            "gateway_copy_failures", "Attempts at writing a copy that failed (retried or held)", registry=r
        )
        self.flag_latency = Histogram(
            "gateway_flag_propagation_latency_seconds",
            "From a flag becoming due on a co-member's copy to the flag set in that mailbox",
            buckets=FLAG_BUCKETS,
            registry=r,
        )
        self.relay_attempts = Counter(
            "gateway_relay_attempts",
            "Attempts at sending mail to a back office, by result (sent, retry, failed)",
            ["result"],
            registry=r,
        )
        self.schema_newer = Gauge(
            "gateway_schema_newer_than_node",
            "1 while the database is at a schema revision this node does not know: another node migrated "
            "it, upgrade this node (docs/deploy.md, Upgrading); 0 otherwise",
            registry=r,
        )
        self.rule_reloads = Counter(
            "gateway_rules_reloads",
            "Reloads of the routing rules, by result (ok, failed: the old rules stay in force)",
            ["result"],
            registry=r,
        )

    def watch_sessions(self, listener: str, count: Callable[[], int]) -> None:
        """Report ``count()`` as the open sessions of ``listener`` at each scrape."""
        self.sessions_open.labels(listener).set_function(lambda: float(count()))

    def answered_message(self, listener: str, reply: str) -> None:
        """Count the answer to one message's DATA on ``listener`` as accepted or refused."""
        code, enhanced = reply_labels(reply)
        if code.startswith("2"):
            self.messages_accepted.labels(listener).inc()
        else:
            self.messages_refused.labels(listener, code, enhanced).inc()
