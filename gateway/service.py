r"""The composition root: builds the stages from the settings, runs them, and shuts them down in order.

The message path, as wired below, top to bottom:

    ingress (submission listener) -> acceptance (one transaction, then 250) -> fan-out (mailboxes)
    ingress (MX listener) -> reply (checks, one transaction, then 250) -> relay (back office)
                                                                       -> fan-out (copies, \Answered)
    directory change (CLI) -> reconcile run -> reconcile (batches) -> fan-out (back-fill, removal)

Shutdown runs it backwards: stop taking connections, let messages in DATA finish and commit, store
what is queued, stop the fan-out between copies (a copy it had begun is found again next start).
"""

from __future__ import annotations

import asyncio
import ctypes
import datetime as dt
import logging
import math
import os
import signal
import ssl
from dataclasses import dataclass

from aiosmtpd.smtp import SMTP

from gateway.config import ListenerSettings, Settings, SubmissionListenerSettings
from gateway.db.engine import create_engine, session_factory
from gateway.db.gauges import stored_state
from gateway.db.membermail import ReplyStorage
from gateway.db.names import directory_names
from gateway.db.schema_state import require_current
from gateway.db.senderauth import sender_auth_refusal
from gateway.db.writer import Writer
from gateway.domain.logins import LoginLimits
from gateway.errors import OperationalError
from gateway.keys import load_token_keys
from gateway.logs import configure_logging
from gateway.mailbox import Mailbox, MaildirMailbox
from gateway.mailbox.imap import ImapMailbox
from gateway.mailbox.routed import RoutedMailbox
from gateway.metrics import Metrics
from gateway.routing.live import RoutingRules
from gateway.senderauth.dns import DnsResolver, SystemResolver
from gateway.smtp_replies import Reply
from gateway.stages.acceptance import Acceptance, HandOff
from gateway.stages.fanout import FanOut, ReplyPath, confirmed_for
from gateway.stages.flagsync import FlagSync, ReadNotifications
from gateway.stages.held import HeldReplies
from gateway.stages.ingress import (
    Accounts,
    GatewaySMTP,
    ListenerState,
    Members,
    MxHandler,
    SessionDeadlines,
    SubmissionHandler,
)
from gateway.stages.nodes import Nodes
from gateway.stages.notices import NoticeSettings
from gateway.stages.parsepool import MailReader, ParsePool
from gateway.stages.reconcile import Reconciler
from gateway.stages.relay import Relay
from gateway.stages.reply import BOUNCES_LOCAL_PART, ReplyContext, ReplyStage
from gateway.stages.schema_watch import SchemaWatch
from gateway.web.app import create_app
from gateway.web.console import Console, Operations
from gateway.web.exposition import Exposition
from gateway.web.readiness import Readiness
from gateway.web.server import WebServer

log = logging.getLogger("gateway.service")

SHUTDOWN_GRACE = 10.0


@dataclass
class Listener:
    state: ListenerState
    server: asyncio.Server

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.sockets[0].getsockname()[:2]
        return str(host), int(port)


def tls_context(settings: ListenerSettings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise OperationalError(
            f"cannot load the TLS certificate {settings.tls_cert} and key {settings.tls_key}: {exc} "
            "(for development, `gateway tls selfsigned` writes a pair)"
        ) from exc
    return context


def mailbox_for(settings: Settings) -> Mailbox:
    """The members' mailboxes the configuration names: Maildirs under maildir_root, or an IMAP server,
    with members routed to servers or logins of their own where ``[mailbox.imap.members]`` says so."""
    if settings.mailbox.backend == "imap":
        if settings.mailbox.imap.members:
            return RoutedMailbox.from_imap_settings(settings.mailbox.imap)
        return ImapMailbox.from_settings(settings.mailbox.imap)
    return MaildirMailbox(
        settings.mailbox.maildir_root,
        batch_sync=settings.mailbox.maildir_sync == "batch",
    )


class Service:
    """One gateway process: ``startup``, ``wait``, ``shutdown`` (uvicorn's Server shape)."""

    def __init__(
        self,
        settings: Settings,
        *,
        mailbox: Mailbox | None = None,
        resolver: DnsResolver | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.settings = settings
        # This process's instruments, on a registry of its own (gateway.metrics); /metrics serves them.
        self.metrics = Metrics()
        self.engine = create_engine(
            settings.database_url, echo=settings.database.echo, database=settings.database
        )
        self.writer = Writer(settings.database_url, echo=settings.database.echo, database=settings.database)
        self.mailbox = mailbox or mailbox_for(settings)
        self.fanout = FanOut(
            self.writer,
            self.mailbox,
            settings.fanout,
            node=settings.gateway.node_name,
            vorgang_header=settings.vorgaenge.vorgang_header,
            tag_subject=settings.vorgaenge.tag_subject,
            metrics=self.metrics,
            trust_confirmation=confirmed_for(
                lease=settings.fanout.lease,
                heartbeat_interval=settings.gateway.heartbeat_interval,
                node_timeout=settings.gateway.node_timeout,
            ),
        )
        handoff: HandOff | None = None
        if settings.fanout.enabled:
            handoff = HandOff(settings.gateway.node_name, settings.fanout.lease, self.fanout.take)
        self.acceptance = Acceptance(
            self.writer,
            hostname=settings.gateway.hostname,
            on_accepted=self.fanout.wake,
            handoff=handoff,
            # A message another node is storing waits for it as long as a lock would (0: no limit).
            busy_wait=settings.database.lock_timeout or math.inf,
        )
        self.relay = Relay(
            self.writer,
            self.mailbox,
            settings.relay,
            node=settings.gateway.node_name,
            hostname=settings.gateway.hostname,
            metrics=self.metrics,
        )
        # Copies that wait: the back office of their mail is told through the relay (gateway.stages.notices).
        self.fanout.notices = NoticeSettings(
            settings.gateway.hostname,
            settings.fanout.delay_notice_after,
            settings.fanout.lifetime,
            settings.relay.lifetime,
        )
        self.fanout.on_notice = self.relay.wake
        self.flagsync = FlagSync(
            self.writer,
            self.mailbox,
            settings.flagsync,
            node=settings.gateway.node_name,
            notifications=ReadNotifications(settings.gateway.hostname, settings.relay.lifetime),
            on_propagated=self.fanout.wake,
            on_notification=self.relay.wake,
        )
        # Directory changes recorded reconcile runs; their back-filled and revoked copies go to the fan-out.
        self.reconciler = Reconciler(
            self.writer, settings.reconcile, node=settings.gateway.node_name, on_copies=self.fanout.wake
        )
        self.resolver = resolver or SystemResolver(timeout=settings.replies.dns_timeout)
        # The routing rules in force; reloaded by their own task and on SIGHUP (gateway.routing.live).
        self.rules = RoutingRules(
            settings.rules.dir,
            interval=settings.rules.reload_interval,
            names=lambda: self.writer.run(directory_names),
            metrics=self.metrics,
        )
        self.handoff = handoff
        # This node in the node table: its start checks, heartbeat, and the take-over of dead nodes,
        # whose leases become due at once; the workers are woken to take them (gateway.stages.nodes).
        self.nodes = Nodes(settings, on_takeover=self._wake_all, on_replaced=self.stop)
        # ``gateway serve --workers N`` shares each listener's port among its processes (SO_REUSEPORT).
        self.reuse_port = reuse_port
        self.listeners: dict[str, Listener] = {}
        # Each listener reads received mail in worker processes of its own (gateway.stages.parsepool).
        self.parse_pools: dict[str, ParsePool] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        # The admin web console reads and changes the directory through the admin API on the async engine;
        # its quarantine and queue actions run on this process's writer and wake the fan-out and relay.
        self.web: WebServer | None = None
        admin_http = settings.listeners.admin_http
        if admin_http.enabled:
            limits = settings.limits
            self.console = Console(
                admin_http,
                session_factory(self.engine),
                LoginLimits(
                    delay=limits.auth_failure_delay,
                    max_delay=limits.auth_failure_max_delay,
                    window=limits.auth_failure_window,
                    per_address=limits.auth_max_failures_per_address,
                    per_login=limits.auth_max_failures_per_login,
                ),
                node=settings.gateway.node_name,
                tls=admin_http.tls_cert is not None,
                operations=Operations(settings, self.writer, self.rules, self._wake_workers),
                metrics=self.metrics,
                exposition=Exposition(
                    self.metrics,
                    lambda: self.writer.run(stored_state, dt.datetime.now(dt.UTC)),
                ),
                readiness=Readiness(self.engine, settings.mailbox, self._unbound_listeners),
            )
            self.web = WebServer(create_app(self.console), admin_http, reuse_port=reuse_port)

    def _wake_all(self) -> None:
        """A dead node's leases became due: every worker here looks for them now."""
        self.fanout.wake()
        self.relay.wake()
        self.reconciler.wake()
        self.held.wake()

    def _wake_workers(self) -> None:
        """The console released mail or put queue items due: the fan-out and the relay look now."""
        self.fanout.wake()
        self.relay.wake()

    def _unbound_listeners(self) -> list[str]:
        """The configured SMTP listeners that are not serving (not yet started, or closed)."""
        configured = [
            name
            for name, listener in (
                ("submission", self.settings.listeners.submission),
                ("mx", self.settings.listeners.mx),
            )
            if listener.enabled
        ]
        return [
            name
            for name in configured
            if name not in self.listeners or not self.listeners[name].server.is_serving()
        ]

    async def startup(self) -> None:
        # Refuse an unmigrated database before taking any mail: every message would get 451.
        await require_current(self.engine)
        # Replies taken without sender authentication only where nobody outside reaches the MX listener
        # unchecked (gateway.domain.mx_exposure).
        async with session_factory(self.engine)() as session:
            refusal = await sender_auth_refusal(session, self.settings)
        if refusal is not None:
            raise OperationalError(f"not starting: {refusal}")
        # Every copy carries a signed reply address; without the keys the gateway does not start.
        self.keys = await asyncio.to_thread(load_token_keys, self.settings.secrets.token_key_files)
        self.fanout.reply_path = ReplyPath(self.keys, self.settings.domains.reply_domain)
        # Replies the collision guard held: notices to their authors, and the hold timeouts.
        self.held = HeldReplies(
            self.writer,
            self.mailbox,
            keys=self.keys,
            storage=ReplyStorage(
                self.settings.domains.reply_domain,
                self.settings.gateway.hostname,
                self.settings.gateway.node_name,
                self.settings.relay.lifetime,
                f"{BOUNCES_LOCAL_PART}@{self.settings.domains.reply_domain}",
            ),
            poll_interval=self.settings.reconcile.poll_interval,
            on_relay=self.relay.wake,
            on_copies=self.fanout.wake,
        )
        # Before any lease is taken back: a second process under this node's name must not take the
        # first one's leases; and the keys and Maildir storage must be the other nodes' (stages/nodes.py).
        await self.nodes.start(self.keys)
        # Rules that cannot be read keep the gateway from starting: it would route as if they did not exist.
        await self.rules.load()
        if self.settings.fanout.enabled:
            await self.fanout.start()
        if self.settings.relay.enabled:
            await self.relay.start()
        self._tasks = [
            asyncio.create_task(self.nodes.run(), name="heartbeat"),
            asyncio.create_task(self.acceptance.run(), name="acceptance"),
            asyncio.create_task(self.rules.watch(), name="rules"),
            asyncio.create_task(self.held.run(), name="held"),
        ]
        if self.settings.fanout.enabled:
            self._tasks.append(asyncio.create_task(self.fanout.run(), name="fanout"))
        if self.settings.relay.enabled:
            self._tasks.append(asyncio.create_task(self.relay.run(), name="relay"))
        if self.settings.flagsync.enabled:
            self._tasks.append(asyncio.create_task(self.flagsync.run(), name="flagsync"))
        if self.settings.reconcile.enabled:
            self._tasks.append(asyncio.create_task(self.reconciler.run(), name="reconcile"))
        # Another node may migrate the database under this one (a rolling upgrade): say so within a minute.
        self._tasks.append(
            asyncio.create_task(
                SchemaWatch(self.writer, self.settings.database.schema_check_interval, self.metrics).run(),
                name="schema-watch",
            )
        )
        for task in self._tasks:
            task.add_done_callback(self._stage_ended)
        submission = self.settings.listeners.submission
        if submission.enabled:
            self.listeners["submission"] = await self._start_submission(submission)
        mx = self.settings.listeners.mx
        if mx.enabled:
            self.listeners["mx"] = await self._start_mx(mx)
        for name, listener in self.listeners.items():
            host, port = listener.address
            log.info("listening: %s on %s:%d", name, host, port, extra={"listener": name, "port": port})
        if self.web is not None:
            await self.web.start()
            host, port = self.web.address
            log.info(
                "listening: admin_http on %s:%d", host, port, extra={"listener": "admin_http", "port": port}
            )
        log.info(
            "gateway ready: node %s, database %s",
            self.settings.gateway.node_name,
            self.engine.url.render_as_string(hide_password=True),
        )

    async def _start_mx(self, config: ListenerSettings) -> Listener:
        settings, limits = self.settings, self.settings.limits
        replies = ReplyStage(
            self.writer,
            keys=self.keys,
            context=ReplyContext(
                reply_domain=settings.domains.reply_domain,
                intake=settings.domains.intake,
                hostname=settings.gateway.hostname,
                node=settings.gateway.node_name,
                max_received=limits.max_received_hops,
                authserv_id=settings.replies.authserv_id,
                relay_lifetime=settings.relay.lifetime,
                max_recorded_size=settings.replies.max_recorded_size,
            ),
            resolver=self.resolver,
            handoff=self.handoff,
            on_relay=self.relay.wake,
            on_copies=self.fanout.wake,
            on_held=self.held.wake,
        )
        state = self._listener_state("mx", config)
        handler = MxHandler(
            replies=replies,
            state=state,
            reply_domain=settings.domains.reply_domain,
            intake=settings.domains.intake,
            max_recipients=limits.max_recipients,
            max_header_size=limits.max_header_size,
            reader=MailReader(
                await self._parse_pool("mx"),
                vorgang_header=settings.vorgaenge.vorgang_header,
                max_received=limits.max_received_hops,
            ),
            mailbox=self.mailbox,
        )
        return await self._listen("mx", config, state, handler, auth=False)

    async def _start_submission(self, config: SubmissionListenerSettings) -> Listener:
        limits = self.settings.limits
        # Sessions that have not logged in never fill the listener: the rest is kept for back offices.
        state = self._listener_state("submission", config, config.max_unauthenticated_connections)
        handler: object = SubmissionHandler(
            acceptance=self.acceptance,
            members=Members(self.writer),
            state=state,
            max_recipients=limits.max_recipients,
            max_header_size=limits.max_header_size,
            max_received_hops=limits.max_received_hops,
            vorgang_header=self.settings.vorgaenge.vorgang_header,
            rules=self.rules,
            reader=MailReader(
                await self._parse_pool("submission"),
                vorgang_header=self.settings.vorgaenge.vorgang_header,
                max_received=limits.max_received_hops,
            ),
            mailbox=self.mailbox,
        )
        return await self._listen("submission", config, state, handler, auth=True)

    def _listener_state(
        self, name: str, config: ListenerSettings, max_unauthenticated: int | None = None
    ) -> ListenerState:
        limits = self.settings.limits
        return ListenerState(
            name,
            config.max_connections,
            limits.max_connections_per_client,
            limits.max_messages_per_minute_per_client,
            max_unauthenticated=max_unauthenticated,
            evict_idle_after=limits.evict_idle_after,
            max_data_memory=config.max_data_memory,
            metrics=self.metrics,
        )

    async def _parse_pool(self, name: str) -> ParsePool:
        limits = self.settings.limits
        pool = ParsePool(name, workers=limits.parse_workers, budget=limits.parse_timeout)
        self.parse_pools[name] = pool
        await pool.start()
        return pool

    async def _listen(
        self, name: str, config: ListenerSettings, state: ListenerState, handler: object, *, auth: bool
    ) -> Listener:
        limits = self.settings.limits
        # aiosmtpd reads the line limit from the class when it builds its stream reader; a class per
        # listener carries this listener's limit and shared state.
        protocol = type(
            f"{name.title()}SMTP",
            (GatewaySMTP,),
            {
                "line_length_limit": limits.max_line_length + 2,
                "state": state,
                "accounts": Accounts(
                    self.writer,
                    LoginLimits(
                        delay=limits.auth_failure_delay,
                        # The wait is ours, not the client's idleness: it may exceed idle_timeout
                        # (GatewaySMTP._timeout_cb).
                        max_delay=limits.auth_failure_max_delay,
                        window=limits.auth_failure_window,
                        per_address=limits.auth_max_failures_per_address,
                        per_login=limits.auth_max_failures_per_login,
                    ),
                    node=self.settings.gateway.node_name,
                    metrics=self.metrics,
                ),
                "requires_auth": auth,
                "deadlines": SessionDeadlines(
                    session=limits.session_timeout, login=limits.login_timeout, data=limits.data_timeout
                ),
            },
        )
        context = tls_context(config)
        loop = asyncio.get_running_loop()

        def factory() -> SMTP:
            smtp: SMTP = protocol(
                handler,
                data_size_limit=limits.max_message_size,
                enable_SMTPUTF8=True,
                decode_data=False,
                hostname=self.settings.gateway.hostname,
                ident="vorgang-gateway",
                tls_context=context,
                require_starttls=False,
                timeout=limits.idle_timeout,
                # GatewaySMTP enforces AUTH itself (requires_auth): aiosmtpd's auth_required would warn
                # on every connection of a local_only listener, where AUTH without TLS is intended.
                auth_required=False,
                # Without AUTH every mechanism is excluded, so an AUTH command is refused (504).
                auth_exclude_mechanism=None if auth else ["PLAIN", "LOGIN"],
                auth_require_tls=auth and not config.local_only,
                loop=loop,
            )
            return smtp

        try:
            server = await loop.create_server(
                factory, host=config.host, port=config.port, reuse_port=self.reuse_port or None
            )
        except OSError as exc:
            raise OperationalError(f"cannot listen on {config.host}:{config.port} for {name}: {exc}") from exc
        self.metrics.watch_sessions(name, lambda: len(state.protocols))
        return Listener(state, server)

    def _stage_ended(self, task: asyncio.Task[None]) -> None:
        # Stages run until shutdown cancels them; one that ends by itself leaves mail unprocessed, so
        # the process stops (and its supervisor restarts it) rather than limp on.
        if task.cancelled():
            return
        log.critical("stage %s ended unexpectedly: %r; stopping", task.get_name(), task.exception())
        self.stop()

    def stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def shutdown(self, grace: float = SHUTDOWN_GRACE) -> None:
        log.info("gateway stopping")
        if self.web is not None:
            await self.web.stop()
            await self.console.previews.close()
            await self.console.replays.close()
        for listener in self.listeners.values():
            listener.state.closing = True
            listener.server.close()
        # Messages in DATA finish and commit; idle sessions are told to come back later.
        deadline = asyncio.get_running_loop().time() + grace
        while any(listener.state.in_data for listener in self.listeners.values()):
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
        for listener in self.listeners.values():
            for protocol in list(listener.state.protocols):
                if protocol.transport is not None:
                    protocol.transport.write(f"{Reply.SHUTTING_DOWN}\r\n".encode())  # type: ignore[attr-defined]
                    protocol.transport.close()
        try:
            async with asyncio.timeout(grace):
                await self.acceptance.drain()
        except TimeoutError:
            log.warning(
                "stopping with %d message(s) not stored; their senders will retry", self.acceptance.queued
            )
        for pool in self.parse_pools.values():
            await pool.close()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: a stage that does not end when cancelled must not keep the process from exiting
            # (seen once under heavy load, not reproduced since); the log names it for the next look.
            _, stuck = await asyncio.wait(self._tasks, timeout=grace)
            for task in stuck:
                log.error("stage %s did not stop within %.0f s; stopping without it", task.get_name(), grace)
        await self.mailbox.close()
        await self.writer.close()
        await self.engine.dispose()
        # Last: until here the node beat, so nobody took over what it was finishing.
        await self.nodes.stop()
        log.info("gateway stopped")


async def serve(settings: Settings, *, ready_fd: int | None = None) -> None:
    """Run one gateway process; as a worker of ``serve --workers`` (``ready_fd``: the supervisor's pipe,
    told once the process takes mail) it shares the listeners' ports with the other workers."""
    service = Service(settings, reuse_port=ready_fd is not None)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, service.stop)
    loop.add_signal_handler(signal.SIGHUP, service.rules.request_reload)
    try:
        await service.startup()
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)
        await service.wait()
    finally:
        await service.shutdown()


# glibc's mallopt(M_MMAP_THRESHOLD): blocks from this size on are mapped on their own and unmapped when freed.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1024 * 1024


def keep_large_buffers_mapped() -> None:
    """Have glibc give each message buffer its own mapping, returned to the system when it is freed.

    By default glibc raises its mmap threshold to the size of the largest block freed (up to 32 MiB), so
    after the first large message every DATA buffer grows inside the heap, where realloc copies and what
    is freed stays with the process: twenty sessions in DATA then cost far more than the bytes the
    listener's budget counts. A fixed threshold keeps large buffers mapped (realloc by mremap, no copy).
    Elsewhere than glibc this does nothing.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        log.debug("mallopt is not available; large buffers are left to the allocator's defaults")


def run(settings: Settings, configuration: str | None = None, *, ready_fd: int | None = None) -> None:
    """Run the gateway in the foreground until SIGTERM or SIGINT; return normally on a clean stop.

    ``configuration`` says which file the settings came from and how it was found, for the log;
    ``ready_fd`` is given to a worker of ``serve --workers`` (gateway.supervisor)."""
    configure_logging(settings.logging.level, settings.logging.format)
    if ready_fd is None:
        log.info("configuration: %s", configuration or settings.source or "built-in defaults")
    else:
        # Its own children (parse pools) must not hold the supervisor's pipe open.
        os.set_inheritable(ready_fd, False)
    keep_large_buffers_mapped()
    asyncio.run(serve(settings, ready_fd=ready_fd))
