"""The database schema as SQLAlchemy 2 declarative models; migrations in ``migrations/`` create it.

Every row that belongs to a tenant carries ``portfolio_id`` itself (not only through a parent), so that
every query can be scoped to one portfolio without a join and a cross-portfolio reference is refused by
the composite foreign keys below rather than by care in each caller.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any, ClassVar, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from gateway.domain.model import ParticipantRole, ReadSync

# Stable constraint names make migrations reviewable and portable between SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY; BigInteger elsewhere keeps room for big event logs.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _opened_at(context: Any) -> dt.datetime:
    """A new Vorgang's last activity when the insert does not say: when it was opened."""
    opened = context.get_current_parameters().get("created_at")
    return opened if isinstance(opened, dt.datetime) else _now()


def utc(value: dt.datetime) -> dt.datetime:
    """A stored time as an aware UTC datetime: SQLite hands back the UTC it stored without its zone,
    PostgreSQL an aware value in the session's zone."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


class Direction(StrEnum):
    """Where a message came from (``messages.direction``)."""

    INBOUND = "inbound"  # a back office's mail, by submission
    REPLY = "reply"  # a member's answer at a reply address
    INTAKE = "intake"  # a member's mail opening a Vorgang at an intake address


class MessageKind(StrEnum):
    """What a stored message is (``messages.kind``): mail that is fanned out, or only kept in its Vorgang.

    The values of what arrives at reply addresses are those of ``gateway.domain.answers.Kind``.
    """

    MESSAGE = "message"
    QUARANTINED = "quarantined"  # held by a routing rule until an admin releases or drops it
    AUTO_REPLY = "auto-reply"
    BOUNCE = "bounce"
    LOOP = "loop"


class CopyState(StrEnum):
    """Where a copy stands (``copies.state``); see ``CopyRow``."""

    PENDING = "pending"
    DELIVERED = "delivered"
    HELD = "held"  # failed max_attempts times: its mailbox is probed every held_retry
    FAILED = "failed"  # given up after [fanout] lifetime
    REVOKING = "revoking"  # reconciliation took it away: the fan-out removes it from the mailbox
    REVOKED = "revoked"
    DROPPED = "dropped"  # by an admin (`gateway queue drop`)


class RelayState(StrEnum):
    """Where a mail to a back office stands (``relays.state``)."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"  # permanently refused, or its lifetime ended
    DROPPED = "dropped"  # by an admin (`gateway queue drop`)


class RelayPurpose(StrEnum):
    """What a relay row carries (``relays.purpose``): one row per message and purpose."""

    MAIL = "mail"  # a member's reply, or a read notification (MDN)
    DELAYED = "delayed"  # a notice to the back office that copies of its message are late
    FAILED = "failed"  # a notice that copies of its message were given up


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dt.datetime: DateTime(timezone=True),
        dict[str, Any]: JSON,
    }


def _same_portfolio(column: str, table: str, *, ondelete: str | None = "CASCADE") -> ForeignKeyConstraint:
    """``column`` names a row of ``table`` in the same portfolio: the composite key (id, portfolio_id)
    refuses a reference across portfolios."""
    return ForeignKeyConstraint(
        [column, "portfolio_id"], [f"{table}.id", f"{table}.portfolio_id"], ondelete=ondelete
    )


class InPortfolio:
    """What every row of one portfolio that has its own id starts with (mixed into the models below;
    ``sort_order`` keeps the two columns first, as the migrations create them)."""

    id: Mapped[int] = mapped_column(BigId, primary_key=True, sort_order=-2)
    portfolio_id: Mapped[int] = mapped_column(
        ForeignKey("portfolios.id", ondelete="CASCADE"), index=True, sort_order=-1
    )


class OfBackOffice:
    """What every row that belongs to one back office starts with (its table names the composite key)."""

    id: Mapped[int] = mapped_column(BigId, primary_key=True, sort_order=-3)
    backoffice_id: Mapped[int] = mapped_column(BigInteger, index=True, sort_order=-2)
    portfolio_id: Mapped[int] = mapped_column(BigInteger, sort_order=-1)


class PortfolioRow(Base):
    """A broker's customer portfolio (Bestand): the tenant."""

    __tablename__ = "portfolios"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    share_vorgaenge_available: Mapped[bool] = mapped_column(Boolean, default=False)
    # How members' replies prove their sender: a ``gateway.domain.directory.SenderAuth`` value. A plain
    # server default, not ``text()``, as on BackOfficeRow: SQLite adds the column without a table rebuild.
    sender_auth: Mapped[str] = mapped_column(String(40), default="off", server_default="off")
    created_at: Mapped[dt.datetime] = mapped_column(default=_now)


class BackOfficeRow(InPortfolio, Base):
    """A back-office system (ams …) that sends mail into one portfolio and receives members' replies.

    The ``relay_*`` columns say how replies reach the back office's SMTP server; without ``relay_host``
    it receives none. Their defaults are those of ``gateway.domain.directory`` (RELAY_PORT, RELAY_TLS,
    RELAY_TIMEOUT). The password is never stored: ``relay_password_file`` names the file that holds it.
    Server defaults are plain constants, not ``text()``: SQLite can then add the columns in place, where
    a table rebuild's DROP TABLE would cascade-delete what refers to back offices (foreign keys are on).
    """

    __tablename__ = "backoffices"
    __table_args__ = (
        UniqueConstraint("portfolio_id", "name"),
        UniqueConstraint("id", "portfolio_id"),
    )

    name: Mapped[str] = mapped_column(String(100))
    ams_version: Mapped[str] = mapped_column(String(40), default="")
    relay_host: Mapped[str | None] = mapped_column(String(255))
    relay_port: Mapped[int] = mapped_column(Integer, default=25, server_default="25")
    # A ``gateway.domain.directory.RelayTls`` value: none, starttls or tls.
    relay_tls: Mapped[str] = mapped_column(String(20), default="starttls", server_default="starttls")
    relay_login: Mapped[str | None] = mapped_column(String(320))
    relay_password_file: Mapped[str | None] = mapped_column(Text)
    # Seconds the relay waits for the back office's server at each step.
    relay_timeout: Mapped[int] = mapped_column(Integer, default=30, server_default="30")
    created_at: Mapped[dt.datetime] = mapped_column(default=_now)


class BackOfficeAddressRow(OfBackOffice, Base):
    """An address a back office sends from; the gateway relays members' replies back to it."""

    __tablename__ = "backoffice_addresses"
    __table_args__ = (
        UniqueConstraint("portfolio_id", "address"),
        _same_portfolio("backoffice_id", "backoffices"),
    )

    address: Mapped[str] = mapped_column(String(320))


class BackOfficeAccountRow(OfBackOffice, Base):
    """A login a back office authenticates with on the submission listener (SMTP AUTH).

    Logins are unique across portfolios because SMTP AUTH names no portfolio; the password is kept only
    as a slow hash (``gateway.domain.passwords``).
    """

    __tablename__ = "backoffice_accounts"
    __table_args__ = (_same_portfolio("backoffice_id", "backoffices"),)

    login: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[dt.datetime] = mapped_column(default=_now)
    updated_at: Mapped[dt.datetime] = mapped_column(default=_now, onupdate=_now)


class MemberRow(InPortfolio, Base):
    """A person on the customer side; the address is unique within the portfolio."""

    __tablename__ = "members"
    __table_args__ = (
        UniqueConstraint("portfolio_id", "address"),
        UniqueConstraint("id", "portfolio_id"),
    )

    address: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=_now)


class ReleaseRow(InPortfolio, Base):
    """A release group (Freischaltung) of one portfolio with its flags."""

    __tablename__ = "releases"
    __table_args__ = (
        UniqueConstraint("portfolio_id", "name"),
        UniqueConstraint("id", "portfolio_id"),
    )

    name: Mapped[str] = mapped_column(String(200))
    primary: Mapped[bool] = mapped_column(Boolean, default=False)
    share_vorgaenge: Mapped[bool] = mapped_column(Boolean, default=False)
    read_sync: Mapped[ReadSync] = mapped_column(
        Enum(ReadSync, name="read_sync", native_enum=False, values_callable=lambda e: [m.value for m in e]),
        default=ReadSync.ANSWERED,
    )
    # What a member newly entitled through the release receives of existing messages ("all", "none",
    # "days:N"), and whether copies lost through it are removed ("remove") or "keep"; see
    # gateway.domain.reconcile.
    backfill: Mapped[str] = mapped_column(String(20), default="all", server_default="all")
    revoked_copies: Mapped[str] = mapped_column(String(10), default="remove", server_default="remove")
    # The collision guard (gateway.domain.collision): "off", "hold", "notify", or NULL for the default
    # of the release's sharing; how long a held reply waits (seconds), and "release" or "withdraw" then.
    collision_guard: Mapped[str | None] = mapped_column(String(10))
    hold_timeout: Mapped[int] = mapped_column(Integer, default=86400, server_default="86400")
    after_hold_timeout: Mapped[str] = mapped_column(String(10), default="release", server_default="release")
    created_at: Mapped[dt.datetime] = mapped_column(default=_now)


class ReleaseMemberRow(Base):
    """Membership of a member in a release, both of the same portfolio.

    ``release_primary`` mirrors ``releases.primary`` so that the database itself can refuse a second
    primary release for one member (a partial unique index); the directory code keeps it in step.
    """

    __tablename__ = "release_members"
    __table_args__ = (
        _same_portfolio("release_id", "releases"),
        _same_portfolio("member_id", "members"),
        Index(
            "uq_release_members_one_primary",
            "member_id",
            unique=True,
            sqlite_where=text("release_primary"),
            postgresql_where=text("release_primary"),
        ),
    )

    release_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, index=True)
    portfolio_id: Mapped[int] = mapped_column(BigInteger)
    release_primary: Mapped[bool] = mapped_column(Boolean, default=False)
    added_at: Mapped[dt.datetime] = mapped_column(default=_now)


class VorgangRow(InPortfolio, Base):
    """A case: the thread of messages between the back office and members, with its public reference."""

    __tablename__ = "vorgaenge"
    __table_args__ = (
        UniqueConstraint("portfolio_id", "reference"),
        UniqueConstraint("id", "portfolio_id"),
        # A routing rule's key (``claim-4711``) names one Vorgang per portfolio; two gateway processes
        # opening it at the same moment collide here, and acceptance's retry then finds the other's.
        Index("uq_vorgaenge_key", "portfolio_id", "key", unique=True),
        # The Vorgänge list pages by last activity: read backwards, the first page is 50 index entries.
        Index("ix_vorgaenge_last_message", "portfolio_id", "last_message_at", "id"),
    )

    reference: Mapped[str] = mapped_column(String(40))
    key: Mapped[str | None] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=_now)
    # When its last message arrived; until it has one (or after its only one was dropped from
    # quarantine), when it was opened. Kept by ``gateway.db.messages.insert_messages`` in the storing
    # transaction, so the list needs no look at the messages to order by it.
    last_message_at: Mapped[dt.datetime] = mapped_column(default=_opened_at)


class VorgangCounterRow(Base):
    """The last Vorgang number handed out per portfolio and year (``VG-2026-000123``).

    Taking a number is one UPDATE of this row, which serialises concurrent sessions and gateway
    processes on both databases without gaps from rolled-back sequences mattering.
    """

    __tablename__ = "vorgang_counters"

    portfolio_id: Mapped[int] = mapped_column(
        ForeignKey("portfolios.id", ondelete="CASCADE"), primary_key=True
    )
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_number: Mapped[int] = mapped_column(BigInteger, default=0)


class MessageRow(Base):
    """One mail, stored as the exact bytes received plus the parsed headers routing needs."""

    __tablename__ = "messages"
    __table_args__ = (
        _same_portfolio("vorgang_id", "vorgaenge", ondelete=None),
        UniqueConstraint("id", "portfolio_id"),
        UniqueConstraint("gateway_id"),
        Index("ix_messages_message_id", "portfolio_id", "message_id"),
        Index("ix_messages_sha256", "portfolio_id", "sha256"),
        # Reconciliation reads a portfolio's messages in id order, batch by batch (keyset).
        Index("ix_messages_portfolio_id", "portfolio_id", "id"),
        # The Vorgänge list orders by each Vorgang's last message: one probe per Vorgang.
        Index("ix_messages_vorgang_received", "vorgang_id", "received_at"),
        # A back office re-sending the same message (same Message-ID, same bytes) gets the first one back.
        Index("uq_messages_resend", "backoffice_id", "message_id", "sha256", unique=True),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    gateway_id: Mapped[str] = mapped_column(String(64))
    portfolio_id: Mapped[int] = mapped_column(BigInteger)
    vorgang_id: Mapped[int] = mapped_column(BigInteger, index=True)
    direction: Mapped[str] = mapped_column(String(20))
    backoffice_id: Mapped[int | None] = mapped_column(ForeignKey("backoffices.id", ondelete="SET NULL"))
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    message_id: Mapped[str | None] = mapped_column(String(998))
    # True when the message came without a Message-ID and the gateway gave it one (recorded, DESIGN §8).
    message_id_assigned: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    in_reply_to: Mapped[str | None] = mapped_column(String(998))
    references: Mapped[str | None] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(Text, default="")
    from_address: Mapped[str | None] = mapped_column(String(320))
    envelope_sender: Mapped[str] = mapped_column(String(320), default="")
    received_at: Mapped[dt.datetime] = mapped_column(default=_now, index=True)
    # "message", or what arrived at a reply address without being an answer: "auto-reply", "bounce",
    # "loop" (kept byte for byte in the Vorgang, never relayed, never fanned out).
    kind: Mapped[str] = mapped_column(String(20), default="message", server_default="message")
    # For mail from members (direction "reply" or "intake"): the member who actually wrote it.
    sender_member_id: Mapped[int | None] = mapped_column(BigInteger)
    # For replies: the message answered (the one whose copy's reply address the member wrote to).
    answers_message_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    # What routing rules change on every copy: {"set": [[name, value], …], "strip": [name, …]}; the
    # stored bytes stay as they came (gateway.stages.fanout applies it when it renders a copy).
    # None is stored as SQL NULL (not JSON null) in both, whichever path stored the message.
    copy_headers: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    # How the message arrived (``gateway.domain.trace.Trace.to_json``): what the Received line on its
    # copies and its relayed mail says. None for messages stored before it was kept.
    trace: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))


class QuarantineRow(Base):
    """A message a routing rule quarantined (``messages.kind`` "quarantined"): stored, not fanned out,
    waiting for an admin to release it (its copies are made then) or drop it (the message is deleted)."""

    __tablename__ = "quarantine"
    __table_args__ = (_same_portfolio("message_id", "messages"),)

    message_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    portfolio_id: Mapped[int] = mapped_column(BigInteger, index=True)
    # The rule that quarantined it (``name (FILE:LINE:COL)``), the reason it gives, and its rule set.
    rule: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text, default="")
    rule_set: Mapped[str] = mapped_column(String(40))
    quarantined_at: Mapped[dt.datetime] = mapped_column(default=_now)


class ParticipantRow(Base):
    """A member who sent a message or was addressed by it, with the role."""

    __tablename__ = "participants"
    __table_args__ = (
        _same_portfolio("message_id", "messages"),
        _same_portfolio("member_id", "members", ondelete=None),
    )

    message_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, index=True)
    role: Mapped[ParticipantRole] = mapped_column(
        Enum(
            ParticipantRole,
            name="participant_role",
            native_enum=False,
            values_callable=lambda e: [m.value for m in e],
        ),
        primary_key=True,
    )
    portfolio_id: Mapped[int] = mapped_column(BigInteger)


class CopyRow(Base):
    """One delivered (or to-be-delivered) instance of a message in one audience member's mailbox.

    It doubles as the fan-out queue: ``state``, ``attempts`` and ``next_attempt_at`` drive the worker.
    States: ``pending`` -> ``delivered`` (or ``held`` after too many failures); reconciliation turns a
    copy nothing allows any more into ``revoking``, which the fan-out removes from the mailbox and marks
    ``revoked``; a member entitled again gets the same row back as ``pending``.
    """

    __tablename__ = "copies"
    __table_args__ = (
        UniqueConstraint("message_id", "member_id"),
        _same_portfolio("message_id", "messages"),
        _same_portfolio("member_id", "members", ondelete=None),
        Index("ix_copies_queue", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    copy_id: Mapped[str] = mapped_column(String(64), unique=True)
    message_id: Mapped[int] = mapped_column(BigInteger)
    member_id: Mapped[int] = mapped_column(BigInteger, index=True)
    portfolio_id: Mapped[int] = mapped_column(BigInteger)
    shared_via_release_id: Mapped[int | None] = mapped_column(ForeignKey("releases.id", ondelete="SET NULL"))
    # The release the copy was shared through, when that release was deleted while its policy was to
    # keep revoked copies: the foreign key above forgets the release, and the copy must stay kept.
    kept_from_release_id: Mapped[int | None] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(default=_now)
    # The node (``gateway.node_name``) that took the copy from the queue; until ``next_attempt_at`` no
    # one else takes it, and the node itself takes back its own leases when it restarts after a crash.
    leased_by: Mapped[str | None] = mapped_column(String(200))
    # Fencing: one more on every claim; a node writes and records only while the row still has the
    # token its claim handed out (gateway.db.queue.confirm, docs/scaling.md).
    lease_token: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    mailbox_ref: Mapped[str | None] = mapped_column(String(500))
    seen: Mapped[bool] = mapped_column(Boolean, default=False)
    answered: Mapped[bool] = mapped_column(Boolean, default=False)
    # A delivered copy whose flags in the mailbox must catch up with ``seen``/``answered`` (set, never
    # cleared there: clearing stays local, DESIGN.md §4); the fan-out takes these like pending copies.
    flags_pending: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # When the fan-out recorded the copy written into the mailbox (the collision guard's "the replier
    # had the message from then on"); NULL until then, and for copies delivered before it was kept.
    delivered_at: Mapped[dt.datetime | None] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(default=_now)
    updated_at: Mapped[dt.datetime] = mapped_column(default=_now, onupdate=_now)


class HeldState(StrEnum):
    """Where a reply the collision guard stopped stands (``held_replies.state``)."""

    HELD = "held"  # stored, not copied, not relayed: waiting for the member, an admin or the timeout
    RELEASED = "released"  # copied and relayed as any reply
    WITHDRAWN = "withdrawn"  # kept in the Vorgang for the record; never copied, never relayed
    NOTIFIED = "notified"  # collision_guard notify: relayed at once, only the notice was owed


class HeldReplyRow(Base):
    """A reply that crossed a co-member's earlier answer (gateway.domain.collision), and its notice.

    A held reply is a stored message without copies and without a relay row: both are made when it is
    released (its copies wait too, because it may be withdrawn and co-members must not have seen an
    answer the back office never got). The notice to its author is written into their mailbox by the
    held-replies worker (``notice_written_at``), and names the two addresses that release or withdraw it.
    """

    __tablename__ = "held_replies"
    __table_args__ = (
        _same_portfolio("message_id", "messages"),
        Index("ix_held_replies_state", "state", "due_at"),
        Index("ix_held_replies_notice", "notice_written_at", "notice_next_at"),
    )

    message_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    portfolio_id: Mapped[int] = mapped_column(BigInteger, index=True)
    # The id the notice's reply addresses carry (lower-case letters and digits, "h" first).
    held_id: Mapped[str] = mapped_column(String(40), unique=True)
    member_id: Mapped[int] = mapped_column(BigInteger)
    answers_message_id: Mapped[int] = mapped_column(BigInteger)
    collides_with_message_id: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(20))
    # The release whose guard held it, and its settings then: a later change does not move a deadline.
    release_name: Mapped[str] = mapped_column(String(200))
    after_hold_timeout: Mapped[str] = mapped_column(String(10))
    held_at: Mapped[dt.datetime] = mapped_column()
    due_at: Mapped[dt.datetime | None] = mapped_column()
    decided_at: Mapped[dt.datetime | None] = mapped_column()
    decided_by: Mapped[str | None] = mapped_column(String(200))
    # The To and Cc of the reply, for the relayed mail rendered when it is released.
    to_addresses: Mapped[list[str]] = mapped_column(JSON)
    cc_addresses: Mapped[list[str]] = mapped_column(JSON)
    notice_written_at: Mapped[dt.datetime | None] = mapped_column()
    notice_next_at: Mapped[dt.datetime | None] = mapped_column()
    notice_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    notice_error: Mapped[str | None] = mapped_column(Text)


class ReconcileRunRow(InPortfolio, Base):
    """A reconciliation of one portfolio's messages with the directory after a change (DESIGN.md §3).

    A directory change that can change audiences records a run in its own transaction; the reconcile
    worker then goes through the portfolio's messages in id order, batch by batch, and ``cursor`` (the
    last message id done) lets it resume where it stopped. There is at most one ``open`` run per
    portfolio: a further change while one is open starts it over (``cursor`` back to 0), because the
    latest directory is what the mailboxes must show. The counters say what the run has done so far.
    """

    __tablename__ = "reconcile_runs"
    __table_args__ = (
        Index(
            "uq_reconcile_runs_open",
            "portfolio_id",
            unique=True,
            sqlite_where=text("state = 'open'"),
            postgresql_where=text("state = 'open'"),
        ),
        Index("ix_reconcile_runs_state", "state", "lease_until"),
    )

    # open -> done
    state: Mapped[str] = mapped_column(String(20), default="open", server_default="open")
    # The directory changes that asked for the run, newest last; who asked.
    reason: Mapped[str] = mapped_column(Text, default="")
    requested_by: Mapped[str] = mapped_column(String(200), default="")
    # How often a directory change started the open run over.
    restarts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cursor: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    total: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    processed: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    backfilled: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    revoked: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    kept: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    leased_by: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[dt.datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=_now)
    updated_at: Mapped[dt.datetime] = mapped_column(default=_now)
    finished_at: Mapped[dt.datetime | None] = mapped_column()


class EventRow(Base):
    """The append-only log: who changed what, and which message went where.

    The migration adds triggers on both databases that refuse UPDATE and DELETE on this table.
    """

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_portfolio_at", "portfolio_id", "at"),
        # The console reads a portfolio's log newest first: ORDER BY id DESC walks this index.
        Index("ix_events_portfolio_id", "portfolio_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=_now, server_default=func.now())
    # No foreign keys: the log outlives what it talks about, and a cascading SET NULL would be an UPDATE.
    portfolio_id: Mapped[int | None] = mapped_column(BigInteger)
    actor: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(60), index=True)
    member_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    vorgang_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    message_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class RelayRow(Base):
    """A member's mail on its way to the back office: the relay queue (one row per message relayed).

    ``data`` holds the exact bytes to send, rendered when the reply was accepted, so every attempt sends
    the same mail with the same Message-ID; ``expires_at`` ends the retries with a DSN to the member.

    A row for a back office's own mail (direction "inbound") is the read notification (RFC 8098 MDN) its
    first reader sent (``gateway.stages.flagsync``): from the null reverse-path (``envelope_sender``
    ""), never
    answered with a DSN. One row per message is what sends it once.
    """

    __tablename__ = "relays"
    __table_args__ = (
        _same_portfolio("message_id", "messages"),
        # One row per message and purpose: a reply or read notification ("mail") is sent once, and so
        # is each notice about the message's copies ("delayed", "failed": gateway.stages.notices).
        UniqueConstraint("message_id", "purpose"),
        Index("ix_relays_queue", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    portfolio_id: Mapped[int] = mapped_column(BigInteger)
    message_id: Mapped[int] = mapped_column(BigInteger)
    backoffice_id: Mapped[int | None] = mapped_column(ForeignKey("backoffices.id", ondelete="SET NULL"))
    # The member who wrote the mail: a failure report (DSN) goes to this member's mailbox. For a read
    # notification, the member who read the back office's mail.
    member_id: Mapped[int] = mapped_column(BigInteger)
    # "mail" (a member's reply or a read notification), or a notice to the back office about its
    # message's copies: "delayed" or "failed" (RFC 3464, from <>; member_id names the first member
    # whose copy is late).
    purpose: Mapped[str] = mapped_column(String(20), default="mail", server_default="mail")
    envelope_sender: Mapped[str] = mapped_column(String(320))
    recipients: Mapped[list[str]] = mapped_column(JSON)
    relay_message_id: Mapped[str] = mapped_column(String(998))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    # pending -> sent | failed (a DSN was put into the member's mailbox; none for a read notification)
    state: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(default=_now)
    leased_by: Mapped[str | None] = mapped_column(String(200))
    # Fencing, as on copies: one more on every claim (gateway.db.relayqueue.confirm).
    lease_token: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    expires_at: Mapped[dt.datetime] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    # The back office's answer to the last attempt, e.g. "250 2.0.0 Ok: queued as 4711".
    last_reply: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=_now)
    updated_at: Mapped[dt.datetime] = mapped_column(default=_now, onupdate=_now)
    sent_at: Mapped[dt.datetime | None] = mapped_column()


class NodeRow(Base):
    """One gateway process sharing the database (``gateway.node_name``): who it is, and its heartbeat.

    ``gateway serve`` records itself at start (refused while another live process has the name), beats
    every ``heartbeat_interval`` and marks itself ``stopped`` on a clean stop. A node whose heartbeat is
    older than ``node_timeout`` is marked ``stale`` by the first other node that notices, in the same
    transaction that makes its leases due (gateway.db.nodes). The key and Maildir columns let a starting
    node check that it shares the others' token keys and Maildir storage.
    """

    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    # alive -> stopped (clean stop) | stale (another node took its leases over)
    state: Mapped[str] = mapped_column(String(20))
    pid: Mapped[int] = mapped_column(Integer)
    host: Mapped[str] = mapped_column(String(255))
    version: Mapped[str] = mapped_column(String(50))
    started_at: Mapped[dt.datetime] = mapped_column()
    heartbeat_at: Mapped[dt.datetime] = mapped_column()
    # The token keys' ids in file order (the first signs), and one fingerprint of the set; never the keys.
    key_ids: Mapped[str] = mapped_column(String(1000))
    key_fingerprint: Mapped[str] = mapped_column(String(64))
    # The key files' paths (newline-separated), for a refusal that says which files to copy.
    key_files: Mapped[str] = mapped_column(Text)
    # The id in the Maildir root's marker file; NULL for a node whose mailboxes are on an IMAP server.
    maildir_marker: Mapped[str | None] = mapped_column(String(64))
    taken_over_by: Mapped[str | None] = mapped_column(String(200))


# The Core tables behind the models, for set-based statements (executemany inserts and updates): the ORM
# would read a list of parameters as its own bulk operation by primary key.
MESSAGES = cast(Table, MessageRow.__table__)
VORGAENGE = cast(Table, VorgangRow.__table__)
PARTICIPANTS = cast(Table, ParticipantRow.__table__)
COPIES = cast(Table, CopyRow.__table__)
EVENTS = cast(Table, EventRow.__table__)
RELAYS = cast(Table, RelayRow.__table__)
QUARANTINE = cast(Table, QuarantineRow.__table__)
RUNS = cast(Table, ReconcileRunRow.__table__)


class AdminRole(StrEnum):
    """What an admin account of the web console may do (``admin_accounts.role``)."""

    OPERATOR = "operator"  # everything, in every portfolio
    PORTFOLIO_ADMIN = "portfolio_admin"  # only the portfolios in admin_account_portfolios


class AdminAccountRow(Base):
    """A person who logs in to the web console (gateway.web); ``gateway admin`` manages them."""

    __tablename__ = "admin_accounts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    login: Mapped[str] = mapped_column(String(200), unique=True)
    # NULL: the account logs in only through a trusted reverse proxy's header, never with a password.
    password_hash: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[dt.datetime] = mapped_column(default=_now)


class AdminAccountPortfolioRow(Base):
    """A portfolio a portfolio admin administers."""

    __tablename__ = "admin_account_portfolios"

    account_id: Mapped[int] = mapped_column(
        ForeignKey("admin_accounts.id", ondelete="CASCADE"), primary_key=True
    )
    portfolio_id: Mapped[int] = mapped_column(
        ForeignKey("portfolios.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class AdminSessionRow(Base):
    """A logged-in console session; stored so that every node of the gateway knows it.

    Only a hash of the cookie's token is kept: a copy of the table logs nobody in.
    """

    __tablename__ = "admin_sessions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("admin_accounts.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column()
    last_seen_at: Mapped[dt.datetime] = mapped_column()
