"""The names routing rules may use, as the directory holds them: portfolios, their members and back offices.

One read of three small tables; ``gateway rules check`` and the running gateway's rule reload check every
portfolio, member and back office a rules file names against it
(``gateway.routing.files.directory_problems``).
"""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import Connection, select

from gateway.db.models import BackOfficeRow, MemberRow, PortfolioRow
from gateway.domain.rules import DirectoryNames


def directory_names(connection: Connection) -> DirectoryNames:
    portfolios = {
        int(pid): str(name) for pid, name in connection.execute(select(PortfolioRow.id, PortfolioRow.name))
    }
    members: dict[str, set[str]] = defaultdict(set)
    backoffices: dict[str, set[str]] = defaultdict(set)
    for pid, address in connection.execute(select(MemberRow.portfolio_id, MemberRow.address)):
        members[portfolios[int(pid)]].add(str(address))
    for pid, name in connection.execute(select(BackOfficeRow.portfolio_id, BackOfficeRow.name)):
        backoffices[portfolios[int(pid)]].add(str(name))
    return DirectoryNames(
        members={name: frozenset(members[name]) for name in portfolios.values()},
        backoffices={name: frozenset(backoffices[name]) for name in portfolios.values()},
    )
