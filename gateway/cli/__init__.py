"""The ``gateway`` command: the only place that turns errors into messages for people and exit codes.

One module per part of the command tree (as Mailman's ``commands/cli_*.py``), each a thin layer over the
programmatic API (``gateway.admin.api``, ``gateway.routing.dryrun``, the storage functions):

    root.py        the ``gateway`` group and its lazy command table; context, errors -> exit status, JSON
    work.py        how a command reaches the database: sessions, one transaction, the writer
    system.py      init, config check, db upgrade|status|backup, secrets, tls, serve
    directory.py   directory load|export, portfolio, member, release, backoffice
    reconcile.py   reconcile status|run
    views.py       vorgang list|show, who-can-see, quarantine, events
    rules.py       rules check|test
    queue.py       queue list|show|retry|drop
    held.py        held list|release|withdraw: replies the collision guard held
    admins.py      admin add|set|remove|list: the web console's accounts
"""

from gateway.cli.root import cli, main

__all__ = ["cli", "main"]
