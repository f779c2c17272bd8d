"""Members' mailboxes on more than one store: each owner's calls go to the mailbox that holds theirs.

With ``[mailbox.imap.members."<address>"]`` tables a member's mailbox can be on another IMAP server, or
on the same server under another login (the member's own account instead of the master user). Each
distinct server and login is one ``ImapMailbox`` with its own connection pool; members without a table,
and members whose table comes to the same server and login, share the mailbox of ``[mailbox.imap]``.

Routing is by ``MailboxOwner.address`` alone, as the IMAP login is: a member's account is one mailbox
whatever portfolio a copy came from. The owner is never checked here; the mailbox it is routed to
checks it, so an invalid owner fails exactly as it would without routing.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.config import ImapSettings
from gateway.mailbox.base import ChangeWatch, Delivery, Flag, FlagChange, Located, Mailbox, MailboxOwner
from gateway.mailbox.imap import ImapMailbox
from gateway.mailbox.imap_connection import ImapServer


class RoutedMailbox(Mailbox):
    """The Mailbox protocol over several mailboxes: ``routes`` by member address, ``default`` for the rest."""

    def __init__(self, default: Mailbox, routes: Mapping[str, Mailbox]) -> None:
        self.default = default
        self.routes = dict(routes)

    @classmethod
    def from_imap_settings(
        cls, settings: ImapSettings, *, ssl_context: ssl.SSLContext | None = None, **options: Any
    ) -> RoutedMailbox:
        """One ``ImapMailbox`` per distinct server and login of ``[mailbox.imap]`` and its member tables;
        ``options`` are ``ImapMailbox``'s keyword arguments, for every one of them."""
        default_server = ImapServer.from_settings(settings, ssl_context=ssl_context)
        mailboxes: dict[ImapServer, Mailbox] = {default_server: ImapMailbox(default_server, **options)}
        routes: dict[str, Mailbox] = {}
        for address in settings.members:
            server = ImapServer.from_settings(settings, member=address, ssl_context=ssl_context)
            if server not in mailboxes:
                mailboxes[server] = ImapMailbox(server, **options)
            if server != default_server:
                routes[address] = mailboxes[server]
        return cls(mailboxes[default_server], routes)

    def mailbox_of(self, owner: MailboxOwner) -> Mailbox:
        """The mailbox that holds ``owner``'s copies."""
        return self.routes.get(owner.address, self.default)

    async def append(
        self,
        owner: MailboxOwner,
        copy_id: str,
        data: bytes,
        flags: frozenset[Flag] = frozenset(),
        *,
        first_attempt: bool = False,
    ) -> Located:
        return await self.mailbox_of(owner).append(owner, copy_id, data, flags, first_attempt=first_attempt)

    async def append_batch(self, deliveries: Sequence[Delivery]) -> list[Located | Exception]:
        # Each mailbox gets its share as one batch (so a store that shares work across a batch still
        # can); the results go back into the caller's order.
        shares: dict[int, tuple[Mailbox, list[int]]] = {}
        for index, delivery in enumerate(deliveries):
            mailbox = self.mailbox_of(delivery.owner)
            shares.setdefault(id(mailbox), (mailbox, []))[1].append(index)
        outcomes = await asyncio.gather(
            *(mailbox.append_batch([deliveries[i] for i in indexes]) for mailbox, indexes in shares.values())
        )
        results: dict[int, Located | Exception] = {}
        for (_, indexes), outcome in zip(shares.values(), outcomes, strict=True):
            results.update(zip(indexes, outcome, strict=True))
        return [results[index] for index in range(len(deliveries))]

    async def find(self, owner: MailboxOwner, copy_id: str) -> list[Located]:
        return await self.mailbox_of(owner).find(owner, copy_id)

    async def add_flags(self, owner: MailboxOwner, copy_id: str, flags: frozenset[Flag]) -> list[Located]:
        return await self.mailbox_of(owner).add_flags(owner, copy_id, flags)

    async def remove_flags(self, owner: MailboxOwner, copy_id: str, flags: frozenset[Flag]) -> list[Located]:
        return await self.mailbox_of(owner).remove_flags(owner, copy_id, flags)

    async def remove(self, owner: MailboxOwner, copy_id: str) -> int:
        return await self.mailbox_of(owner).remove(owner, copy_id)

    async def flag_changes(self, owner: MailboxOwner, since: str | None) -> tuple[list[FlagChange], str]:
        return await self.mailbox_of(owner).flag_changes(owner, since)

    def watch(self, owner: MailboxOwner) -> ChangeWatch | None:
        return self.mailbox_of(owner).watch(owner)

    async def keeps_nul(self, owner: MailboxOwner | None = None) -> bool | None:
        if owner is not None:
            return await self.mailbox_of(owner).keeps_nul(owner)
        # Without an owner the copies may go to any store: all of them must keep NUL bytes; one that
        # cannot tell yet makes the answer unknown, one that cannot keep them makes it no.
        distinct = {id(mailbox): mailbox for mailbox in (self.default, *self.routes.values())}
        answers = [await mailbox.keeps_nul() for mailbox in distinct.values()]
        if False in answers:
            return False
        return None if None in answers else True

    async def close(self) -> None:
        distinct = {id(mailbox): mailbox for mailbox in (self.default, *self.routes.values())}
        # Every mailbox gets closed even when one of them fails to; the first failure is raised after.
        outcomes = await asyncio.gather(*(m.close() for m in distinct.values()), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
