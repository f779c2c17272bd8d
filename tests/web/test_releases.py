"""The releases and members pages over HTTP, on SQLite and PostgreSQL: a release's settings and members,
the preview of a change that alters audiences, its confirmation and the reconcile run it records, and
the directory's errors next to the field they concern."""

from __future__ import annotations

import asyncio
import html
import itertools
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from gateway.admin import api
from gateway.db.engine import session_factory
from gateway.db.writer import Writer
from gateway.web.app import areas
from gateway.web.preview_tasks import Shown
from gateway.web.routes import Scope
from tests.stages.conftest import accept
from tests.stages.test_reconcile import reconciler
from tests.web.conftest import (
    MUSTER,
    OPERATOR,
    OPERATOR_PASSWORD,
    OTHER,
    ZWEI,
    ZWEI_PASSWORD,
    Browser,
    ConsoleUnderTest,
)
from tests.web.test_permissions import url_of

WITH_GF = "Kunde B mit GF"
SB_B = "Kunde B Sachbearbeiter"
GF_B = "gf-b@kunde-b.example"
GF_A = "gf-a@kunde-a.example"
SB_B1 = "sb-b1@kunde-b.example"
SB_B2 = "sb-b2@kunde-b.example"
SB_A1 = "sb-a1@kunde-a.example"

HIDDEN_RE = re.compile(r'<input type="hidden" name="(\w+)" value="([^"]*)">')


def release_url(name: str, portfolio: str = MUSTER) -> str:
    return f"/portfolios/{portfolio}/releases/{quote(name, safe='')}"


def problem(page: str, field: str) -> str:
    """The text shown next to ``field`` (its ``<field>-problem`` element), or "" when none."""
    found = re.search(rf'id="{field}-problem">(.*?)</p>', page, re.S)
    return html.unescape(found.group(1)) if found else ""


def confirmation(page: str) -> dict[str, str]:
    """The fields of a preview's confirmation form, as the browser would send them back."""
    form = page[page.index('class="confirm"') :]
    return {name: html.unescape(value) for name, value in HIDDEN_RE.findall(form)}


async def previewed(browser: Browser, answer: httpx.Response) -> httpx.Response:
    """The page a change's POST sent the admin to, once its preview is planned (as the page's script
    waits: polling the JSON)."""
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    assert re.fullmatch(r"/portfolios/[\w-]+/previews/[\w-]{20,}", location), location
    for _ in range(3000):
        state = (await browser.client.get(location + "/progress")).json()
        if state["done"]:
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail(f"the preview {location} was never done")
    return await browser.client.get(location)


async def cli(web: ConsoleUnderTest, *args: str) -> None:
    # The CLI runs its own event loop: in a thread.
    await asyncio.to_thread(web.cli, *args)


@pytest.fixture
async def op(browser: Browser) -> Browser:
    assert (await browser.login(OPERATOR, OPERATOR_PASSWORD)).status_code == 303
    return browser


@pytest.fixture
async def writer(web: ConsoleUnderTest, tmp_path: Path) -> AsyncIterator[Writer]:
    """The writer thread on the console's database, with the back office able to submit mail."""
    password = tmp_path / "ams.password"
    password.write_text("web-test-password\n", encoding="utf-8")
    await cli(web, "backoffice", "password", "ams", "-p", MUSTER, "--password-file", str(password))
    w = Writer(web.database_url)
    try:
        yield w
    finally:
        await w.close()


async def sharing_of(web: ConsoleUnderTest, release: str) -> bool:
    [(value,)] = await web.sql("SELECT share_vorgaenge FROM releases WHERE name = :n", n=release)
    return bool(value)


async def memberships(web: ConsoleUnderTest, release: str) -> set[str]:
    rows = await web.sql(
        "SELECT m.address FROM release_members rm JOIN members m ON m.id = rm.member_id "
        "JOIN releases r ON r.id = rm.release_id WHERE r.name = :n",
        n=release,
    )
    return {address for (address,) in rows}


async def reconcile_all(writer: Writer) -> None:
    while await reconciler(writer).run_once():
        pass


# --- the release page -----------------------------------------------------------------------------------


async def test_the_release_page_shows_its_members_flags_and_policies(op: Browser) -> None:
    page = await op.client.get(release_url(WITH_GF))
    assert page.status_code == 200
    text = page.text
    assert "Freischaltung Kunde B mit GF" in text
    for member in (SB_B1, SB_B2, GF_B):
        assert f'name="member" value="{member}"' in text  # each with its remove form
    # The member select offers only members not in the release yet.
    select = text[
        text.index('<select id="member"') : text.index("</select>", text.index('<select id="member"'))
    ]
    assert SB_A1 in select
    assert GF_B not in select
    assert re.search(r'id="share_vorgaenge" name="share_vorgaenge" checked', text)
    assert not re.search(r'id="primary" name="primary" checked', text)
    assert '<option value="answered" selected>' in text
    assert '<option value="all" selected>' in text
    assert '<option value="remove" selected>' in text
    # Linked from the portfolio page, with the forms to create and delete releases there.
    portfolio = (await op.client.get(f"/portfolios/{MUSTER}")).text
    assert f'href="/portfolios/{MUSTER}/releases"' in portfolio
    assert f'href="/portfolios/{MUSTER}/members"' in portfolio
    assert f'action="/portfolios/{MUSTER}/releases/Kunde%20B%20mit%20GF/delete"' in portfolio


async def test_a_change_without_audience_effect_is_made_at_once_as_web_login(
    web: ConsoleUnderTest, op: Browser
) -> None:
    fields = {"share_vorgaenge": "on", "read_sync": "seen", "backfill": "all", "revoked_copies": "remove"}
    answer = await op.post(release_url(WITH_GF), fields)
    assert answer.status_code == 303
    assert answer.headers["location"] == release_url(WITH_GF) + "?saved=1"
    [(read_sync,)] = await web.sql("SELECT read_sync FROM releases WHERE name = :n", n=WITH_GF)
    assert read_sync == "seen"
    [event] = [e for e in await web.events("release.update") if e["actor"] == f"web:{OPERATOR}"]
    assert event["detail"]["name"] == WITH_GF or WITH_GF in str(event["detail"])
    assert "Gespeichert." in (await op.client.get(answer.headers["location"])).text


async def test_bad_settings_are_answered_next_to_their_field_with_the_form_kept(
    web: ConsoleUnderTest, op: Browser
) -> None:
    fields = {"share_vorgaenge": "on", "read_sync": "seen", "backfill": "days", "backfill_days": "zwölf"}
    answer = await op.post(release_url(WITH_GF), {**fields, "revoked_copies": "shred"})
    assert answer.status_code == 400
    assert "Anzahl Tage von 1 bis 99999" in problem(answer.text, "backfill_days")
    assert "nicht mehr erlaubten Kopien" in problem(answer.text, "revoked_copies")
    # Kept as typed: the read_sync chosen, the days typed.
    assert '<option value="seen" selected>' in answer.text
    assert 'value="zwölf"' in answer.text
    [(read_sync,)] = await web.sql("SELECT read_sync FROM releases WHERE name = :n", n=WITH_GF)
    assert read_sync == "answered"


# --- the preview, the confirmation, the run -------------------------------------------------------------


async def test_ticking_vorgaenge_teilen_previews_the_back_fill_and_confirming_makes_it(
    web: ConsoleUnderTest, op: Browser, writer: Writer
) -> None:
    await cli(web, "release", "set", WITH_GF, "--no-share-vorgaenge", "-p", MUSTER)
    await accept(writer, SB_B1, "Schaden SB-B1")
    await accept(writer, SB_B1, "Noch einer SB-B1")
    await accept(writer, GF_B, "Vertrag GF-B")
    await accept(writer, GF_A, "Bilanz GF-A")
    copies_before = await web.sql("SELECT COUNT(*) FROM copies")
    fields = {"share_vorgaenge": "on", "read_sync": "answered", "backfill": "all", "revoked_copies": "remove"}

    posted = await op.post(release_url(WITH_GF), fields, from_page=release_url(WITH_GF))
    # Answered at once: the preview is planned in the background, on a page of its own.
    assert posted.status_code == 303
    computing = await op.client.get(posted.headers["location"])
    assert computing.status_code == 200
    assert "Freischaltung „Kunde B mit GF“ ändern (Vorgänge teilen: ja)" in html.unescape(computing.text)
    preview = await previewed(op, posted)
    assert preview.status_code == 200
    text = html.unescape(preview.text)
    assert "Vorschau der Änderung" in text
    assert "Freischaltung „Kunde B mit GF“ ändern (Vorgänge teilen: ja)" in text
    assert "3 Nachrichten geprüft" in text  # GF-A's mail has no participant in the release: not read
    # DESIGN.md §3: GF-B gains SB-B1's two, the clerks of B gain GF-B's one; GF-A's own stays with GF-A.
    rows = {
        address: row
        for row in re.findall(r"<tr>.*?</tr>", text, re.S)
        if (address := next((a for a in (GF_B, SB_B1, SB_B2, GF_A) if a in row), None))
    }
    assert set(rows) == {GF_B, SB_B1, SB_B2}
    assert "2 Nachr." in rows[GF_B]
    assert "Schaden SB-B1" in rows[GF_B]
    assert "Noch einer SB-B1" in rows[GF_B]
    assert "1 Nachr." in rows[SB_B2]
    assert "Vertrag GF-B" in rows[SB_B2]
    assert "Bilanz GF-A" not in text
    assert re.search(r"Kopien, die nachgeliefert werden</dt><dd>4</dd>", text)
    # A preview changes nothing.
    assert await sharing_of(web, WITH_GF) is False
    assert await web.sql("SELECT COUNT(*) FROM copies") == copies_before
    assert await web.sql("SELECT id FROM reconcile_runs") == []

    confirm = confirmation(preview.text)
    assert confirm["confirm"] == "1"
    assert confirm["share_vorgaenge"] == "on"
    done = await op.client.post(release_url(WITH_GF), data=confirm)
    assert done.status_code == 303
    [(run_id, requested_by)] = await web.sql("SELECT id, requested_by FROM reconcile_runs")
    assert done.headers["location"] == f"/portfolios/{MUSTER}/reconcile/{run_id}"
    assert requested_by == f"web:{OPERATOR}"
    assert await sharing_of(web, WITH_GF) is True
    # The CLI's --no-share-vorgaenge first, then the console's change.
    updates = await web.events("release.update")
    assert len(updates) == 2
    assert updates[-1]["actor"] == f"web:{OPERATOR}"

    progress = await op.client.get(done.headers["location"])
    assert progress.status_code == 200
    assert 'src="/static/releases.js"' in progress.text
    assert "Neu laden" in progress.text
    assert (await op.client.get(done.headers["location"] + "/progress")).json()["done"] is False

    await reconcile_all(writer)
    state = (await op.client.get(done.headers["location"] + "/progress")).json()
    assert state["done"] is True
    assert state["state"] == "done"
    assert (state["processed"], state["total"], state["backfilled"], state["revoked"]) == (4, 4, 4, 0)
    assert "Fertig" in (await op.client.get(done.headers["location"])).text


async def test_a_confirmation_of_a_directory_that_changed_meanwhile_shows_the_new_preview(
    web: ConsoleUnderTest, op: Browser, writer: Writer
) -> None:
    await cli(web, "release", "set", WITH_GF, "--no-share-vorgaenge", "-p", MUSTER)
    await accept(writer, SB_B1, "Schaden SB-B1")
    fields = {"share_vorgaenge": "on", "read_sync": "answered", "backfill": "all", "revoked_copies": "remove"}
    preview = await previewed(op, await op.post(release_url(WITH_GF), fields, from_page=release_url(WITH_GF)))
    await cli(web, "release", "remove-member", WITH_GF, SB_B2, "-p", MUSTER)

    again = await previewed(op, await op.client.post(release_url(WITH_GF), data=confirmation(preview.text)))
    assert again.status_code == 200
    assert "Das Verzeichnis wurde inzwischen geändert" in html.unescape(again.text)
    assert await sharing_of(web, WITH_GF) is False
    # The new preview's confirmation is the one that counts.
    assert (await op.client.post(release_url(WITH_GF), data=confirmation(again.text))).status_code == 303
    assert await sharing_of(web, WITH_GF) is True


async def test_removing_a_member_from_a_release_previews_the_revocation(
    web: ConsoleUnderTest, op: Browser, writer: Writer
) -> None:
    await accept(writer, SB_B1, "Schaden SB-B1")
    preview = await previewed(op, await op.post(release_url(WITH_GF) + "/members/remove", {"member": GF_B}))
    assert preview.status_code == 200
    text = html.unescape(preview.text)
    assert f"{GF_B} aus „Kunde B mit GF“ entfernen" in text
    assert re.search(r"Kopien, die entfernt werden</dt><dd>1</dd>", text)
    assert GF_B in await memberships(web, WITH_GF)
    answer = await op.client.post(release_url(WITH_GF) + "/members/remove", data=confirmation(preview.text))
    assert answer.status_code == 303
    assert "/reconcile/" in answer.headers["location"]
    assert GF_B not in await memberships(web, WITH_GF)
    [event] = await web.events("membership.remove")
    assert event["actor"] == f"web:{OPERATOR}"


async def account_id(web: ConsoleUnderTest, login: str) -> int:
    [(found,)] = await web.sql("SELECT id FROM admin_accounts WHERE login = :l", l=login)
    return int(found)


async def test_a_preview_is_found_only_by_its_account_under_its_portfolio_and_only_for_a_while(
    web: ConsoleUnderTest, op: Browser, tmp_path: Path
) -> None:
    posted = await op.post(release_url(WITH_GF) + "/members/remove", {"member": GF_B})
    page = await previewed(op, posted)
    assert "Bestätigen und ändern" in page.text
    location = posted.headers["location"]
    preview_id = location.rsplit("/", 1)[1]

    def gone(answer: httpx.Response) -> None:
        assert answer.status_code == 404
        assert "Diese Vorschau gibt es nicht (mehr)" in html.unescape(answer.text)
        assert "Die Änderung neu beginnen" in html.unescape(answer.text)  # a link to start again

    unknown = await op.client.get(f"/portfolios/{MUSTER}/previews/kein-solcher-preview-id-000")
    gone(unknown)
    assert f'href="/portfolios/{MUSTER}"' in unknown.text
    assert (await op.client.get(f"/portfolios/{MUSTER}/previews/unbekannt/progress")).status_code == 404
    # The operator administers makler-zwei too: the id is bound to its portfolio as well.
    gone(await op.client.get(f"/portfolios/{OTHER}/previews/{preview_id}"))

    # Another operator: the same answer as for an id that does not exist.
    password = tmp_path / "op2.password"
    password.write_text("zweiter-betrieb-1\n", encoding="utf-8")
    await cli(web, "admin", "add", "op2", "--role", "operator", "--password-file", str(password))
    other = web.make()
    other.console.previews = op.console.previews  # the same node, so the same memory
    assert (await other.login("op2", "zweiter-betrieb-1")).status_code == 303
    gone(await other.client.get(location))
    assert (await other.client.get(location + "/progress")).status_code == 404

    # Kept a few minutes: afterwards it is gone for its own account too.
    store = op.console.previews
    assert store.find(preview_id, await account_id(web, OPERATOR), MUSTER) is not None
    store.clock = lambda: 10**9
    gone(await op.client.get(location))


async def test_a_further_preview_is_refused_with_429_while_others_are_computing(
    web: ConsoleUnderTest, op: Browser
) -> None:
    store = op.console.previews
    hold = asyncio.Event()

    async def waiting(checked: Callable[[int], None]) -> api.ChangePreview:
        checked(7)
        await hold.wait()
        raise RuntimeError("never shown")

    shown = Shown("/", "t", release_url(WITH_GF), {}, "fp", False, ())
    mine = store.start(await account_id(web, OPERATOR), MUSTER, shown, waiting)
    await asyncio.sleep(0)
    # The account's own one is still computing: refused, with a link to it.
    busy = await op.post(release_url(WITH_GF) + "/members/remove", {"member": GF_B})
    assert busy.status_code == 429
    assert busy.headers["retry-after"].isdigit()
    assert "Ihre vorige Vorschau wird noch berechnet" in busy.text
    assert f'href="/portfolios/{MUSTER}/previews/{mine.id}"' in busy.text
    state = (await op.client.get(f"/portfolios/{MUSTER}/previews/{mine.id}/progress")).json()
    assert (state["done"], state["checked"], state["text"]) == (False, 7, "7 Nachrichten geprüft")
    page = await op.client.get(f"/portfolios/{MUSTER}/previews/{mine.id}")
    assert "Vorschau wird berechnet" in page.text
    assert 'src="/static/releases.js"' in page.text
    assert "Neu laden" in page.text
    assert "Bestätigen und ändern" not in page.text

    hold.set()
    assert mine.task is not None
    await mine.task
    # A failure says only that it failed; the log has why.
    failed = await op.client.get(f"/portfolios/{MUSTER}/previews/{mine.id}")
    assert "Die Vorschau konnte nicht berechnet werden." in failed.text
    assert "never shown" not in failed.text

    # Over the bound of the node (here none may compute): refused, nothing started, nothing changed.
    store.computing = 0
    full = await op.post(release_url(WITH_GF) + "/members/remove", {"member": GF_B})
    assert full.status_code == 429
    assert "zu viele Vorschauen" in full.text
    assert GF_B in await memberships(web, WITH_GF)
    store.computing = 2
    assert (await op.post(release_url(WITH_GF) + "/members/remove", {"member": GF_B})).status_code == 303


async def test_planning_a_preview_gives_the_event_loop_back_between_batches(
    web: ConsoleUnderTest, writer: Writer
) -> None:
    for n in range(3):
        await accept(writer, SB_B1, f"Schaden {n}")
    turns = 0
    stop = asyncio.Event()

    async def other_work() -> None:
        # Stands for an SMTP session of the same process: it runs whenever the loop is free.
        nonlocal turns
        while not stop.is_set():
            turns += 1
            await asyncio.sleep(0)

    seen: list[tuple[int, int]] = []
    sessions = session_factory(web.engine)
    ticker = asyncio.create_task(other_work())
    try:
        async with sessions() as session:
            work = await api.prepare_preview(
                session, MUSTER, api.release_membership(WITH_GF, GF_B, joins=False)
            )
            result = await api.plan_preview(
                session, work, batch_size=1, planned=lambda n: seen.append((n, turns))
            )
    finally:
        stop.set()
        await ticker
    assert [n for n, _ in seen] == [1, 2, 3]
    assert result.preview.messages == 3
    # The other work ran between every two batches.
    assert all(later > earlier for (_, earlier), (_, later) in itertools.pairwise(seen))


# --- the directory's errors next to their field ---------------------------------------------------------


async def test_adding_gf_b_to_the_clerks_primary_release_is_a_conflict_shown_at_the_member_field(
    web: ConsoleUnderTest, op: Browser
) -> None:
    answer = await op.post(release_url(SB_B) + "/members", {"member": GF_B})
    assert answer.status_code == 409
    said = problem(answer.text, "member")
    assert GF_B in said
    assert "„Kunde B Sachbearbeiter“" in said
    assert "„Geschäftsführer“" in said
    assert "nur in einer Hauptfreischaltung" in said
    assert 'aria-describedby="member-problem" aria-invalid="true"' in answer.text
    assert GF_B not in await memberships(web, SB_B)
    # In English too.
    await op.post("/language", {"language": "en", "next": "/"})
    english = await op.post(release_url(SB_B) + "/members", {"member": GF_B})
    assert "can be in only one primary release per portfolio" in problem(english.text, "member")


async def test_making_kunde_b_mit_gf_primary_is_a_conflict_shown_at_the_primary_field_form_kept(
    web: ConsoleUnderTest, op: Browser
) -> None:
    fields = {"primary": "on", "share_vorgaenge": "on", "read_sync": "seen", "backfill": "none"}
    answer = await op.post(release_url(WITH_GF), {**fields, "revoked_copies": "keep"})
    assert answer.status_code == 409
    said = problem(answer.text, "primary")
    for member, other in ((SB_B1, SB_B), (SB_B2, SB_B), (GF_B, "Geschäftsführer")):
        assert f"{member} wäre zugleich in den Hauptfreischaltungen" in said
        assert f"„{other}“ und „{WITH_GF}“" in said or f"„{WITH_GF}“ und „{other}“" in said
    assert re.search(r'id="primary" name="primary" checked', answer.text)  # the form as sent
    assert '<option value="seen" selected>' in answer.text
    assert '<option value="keep" selected>' in answer.text
    [(primary,)] = await web.sql('SELECT "primary" FROM releases WHERE name = :n', n=WITH_GF)
    assert not primary


async def test_sharing_where_the_portfolio_does_not_offer_it_is_disabled_and_refused(
    web: ConsoleUnderTest, op: Browser
) -> None:
    created = await op.post(f"/portfolios/{OTHER}/releases", {"name": "Team", "primary": "on"})
    assert created.status_code == 303
    assert created.headers["location"] == release_url("Team", OTHER) + "?saved=1"
    page = (await op.client.get(created.headers["location"])).text
    assert re.search(r'id="share_vorgaenge" name="share_vorgaenge" disabled', page)
    assert "bietet „Vorgänge teilen“ nicht an" in html.unescape(page)
    # A form that sends the box anyway is refused next to it.
    fields = {"share_vorgaenge": "on", "read_sync": "answered", "backfill": "all", "revoked_copies": "remove"}
    answer = await op.post(release_url("Team", OTHER), fields)
    assert answer.status_code == 409
    assert "„Team“ kann keine Vorgänge teilen" in problem(answer.text, "share_vorgaenge")


async def test_a_member_of_another_portfolio_cannot_join_a_release(
    web: ConsoleUnderTest, op: Browser
) -> None:
    await op.post(f"/portfolios/{OTHER}/releases", {"name": "Team"})
    answer = await op.post(release_url("Team", OTHER) + "/members", {"member": SB_A1})
    assert answer.status_code == 400
    assert f"{SB_A1} ist kein Mitglied des Bestands {OTHER}" in problem(answer.text, "member")
    assert await memberships(web, "Team") == set()


# --- creating and deleting releases ---------------------------------------------------------------------


async def test_creating_a_release_and_its_errors(web: ConsoleUnderTest, op: Browser) -> None:
    form = await op.client.get(f"/portfolios/{MUSTER}/releases")
    assert form.status_code == 200
    assert 'id="name" name="name"' in form.text
    fields = {"name": "Vertrieb", "read_sync": "off", "backfill": "days", "backfill_days": "30"}
    created = await op.post(f"/portfolios/{MUSTER}/releases", {**fields, "revoked_copies": "keep"})
    assert created.status_code == 303
    [(read_sync, backfill, revoked)] = await web.sql(
        "SELECT read_sync, backfill, revoked_copies FROM releases WHERE name = 'Vertrieb'"
    )
    assert (read_sync, backfill, revoked) == ("off", "days:30", "keep")
    created_by_web = [e for e in await web.events("release.create") if e["actor"] == f"web:{OPERATOR}"]
    assert len(created_by_web) == 1
    again = await op.post(f"/portfolios/{MUSTER}/releases", {"name": "Vertrieb"})
    assert again.status_code == 409
    assert "exists already" in problem(again.text, "name")
    assert 'value="Vertrieb"' in again.text
    nameless = await op.post(f"/portfolios/{MUSTER}/releases", {"name": "  "})
    assert nameless.status_code == 400
    assert "einen Namen" in problem(nameless.text, "name")


async def test_deleting_a_release_is_confirmed_first(web: ConsoleUnderTest, op: Browser) -> None:
    preview = await previewed(
        op, await op.post(release_url(WITH_GF) + "/delete", from_page=f"/portfolios/{MUSTER}")
    )
    assert preview.status_code == 200
    text = html.unescape(preview.text)
    assert "Freischaltung „Kunde B mit GF“ löschen" in text
    assert "noch keine Nachrichten" in text
    assert await web.sql("SELECT id FROM releases WHERE name = :n", n=WITH_GF) != []
    done = await op.client.post(release_url(WITH_GF) + "/delete", data=confirmation(preview.text))
    assert done.status_code == 303
    assert done.headers["location"] == f"/portfolios/{MUSTER}?saved=1"
    assert await web.sql("SELECT id FROM releases WHERE name = :n", n=WITH_GF) == []
    [event] = await web.events("release.delete")
    assert event["actor"] == f"web:{OPERATOR}"


# --- the members of a portfolio -------------------------------------------------------------------------


async def test_members_are_added_renamed_and_removed(web: ConsoleUnderTest, op: Browser) -> None:
    page = await op.client.get(f"/portfolios/{MUSTER}/members")
    assert page.status_code == 200
    assert SB_A1 in page.text
    path = f"/portfolios/{MUSTER}/members"
    added = await op.post(path, {"address": "Neu@Kunde-C.example", "display_name": "Neu C"})
    assert added.status_code == 303
    assert await web.sql("SELECT display_name FROM members WHERE address = 'neu@kunde-c.example'") == [
        ("Neu C",)
    ]
    twice = await op.post(path, {"address": "neu@kunde-c.example", "display_name": "Doppelt"})
    assert twice.status_code == 409
    assert "ist schon Mitglied" in problem(twice.text, "address")
    assert 'value="Doppelt"' in twice.text
    invalid = await op.post(path, {"address": "kein-at-zeichen", "display_name": ""})
    assert invalid.status_code == 400
    assert "keine gültige Adresse" in html.unescape(problem(invalid.text, "address"))

    assert (await op.post(path + "/rename", {"member": SB_A1, "display_name": "Anna A"})).status_code == 303
    assert await web.sql("SELECT display_name FROM members WHERE address = :a", a=SB_A1) == [("Anna A",)]
    assert (await op.post(path + "/rename", {"member": "niemand@x.example"})).status_code == 404

    # A member in a sharing release: its removal is previewed, then confirmed.
    preview = await previewed(op, await op.post(path + "/remove", {"member": SB_A1}))
    assert preview.status_code == 200
    assert "aus dem Bestand entfernen" in html.unescape(preview.text)
    assert (await op.client.post(path + "/remove", data=confirmation(preview.text))).status_code == 303
    assert await web.sql("SELECT id FROM members WHERE address = :a", a=SB_A1) == []
    kinds = dict(await web.sql("SELECT kind, actor FROM events"))
    for kind in ("member.create", "member.update", "member.delete"):
        assert kinds[kind] == f"web:{OPERATOR}"


# --- who may --------------------------------------------------------------------------------------------


def my_routes() -> list[tuple[str, str]]:
    return [
        (url_of(r, MUSTER), m)
        for a in areas()
        if a.name in ("releases", "members")
        for r in a.routes
        for m in sorted(r.methods or ())
        if m != "HEAD"
    ]


async def test_make_believe_paths_are_404_never_500(op: Browser) -> None:
    assert {r.scope for a in areas() if a.name in ("releases", "members") for r in a.routes} == {
        Scope.PORTFOLIO
    }
    for url, method in my_routes():
        if method == "GET":
            response = await op.client.get(url)
        else:
            response = await op.post(url, {"member": "x1@x.example", "name": "x1"})
        if url.endswith("/members") or url.endswith("/releases") or "/members/" in url:
            # The portfolio's own pages: x1 is then only a form value (an unknown member).
            assert response.status_code in (200, 303, 400, 404), f"{method} {url}: {response.status_code}"
        else:
            assert response.status_code == 404, f"{method} {url}: {response.status_code}"


async def test_a_portfolio_admin_of_makler_zwei_reaches_nothing_of_makler_muster(
    web: ConsoleUnderTest, browser: Browser, writer: Writer
) -> None:
    await accept(writer, SB_B1, "Schaden")
    await cli(web, "release", "remove-member", WITH_GF, GF_B, "-p", MUSTER)
    [(run_id,)] = await web.sql("SELECT id FROM reconcile_runs")
    # A makler-muster preview, started by an operator on the same node.
    operator = web.make()
    operator.console.previews = browser.console.previews  # the same node
    assert (await operator.login(OPERATOR, OPERATOR_PASSWORD)).status_code == 303
    preview = (await previewed(operator, await operator.post(release_url(WITH_GF) + "/delete"))).url.path
    assert (await operator.client.get(preview)).status_code == 200
    assert (await browser.login(ZWEI, ZWEI_PASSWORD)).status_code == 303
    real = [
        ("GET", release_url(WITH_GF), {}),
        ("GET", f"/portfolios/{MUSTER}/members", {}),
        ("GET", f"/portfolios/{MUSTER}/releases", {}),
        ("GET", f"/portfolios/{MUSTER}/reconcile/{run_id}", {}),
        ("GET", f"/portfolios/{MUSTER}/reconcile/{run_id}/progress", {}),
        ("GET", preview, {}),
        ("GET", preview + "/progress", {}),
        ("POST", release_url(WITH_GF), {"share_vorgaenge": "", "read_sync": "off", "confirm": "1"}),
        ("POST", release_url(WITH_GF) + "/members", {"member": SB_A1, "confirm": "1"}),
        ("POST", release_url(WITH_GF) + "/members/remove", {"member": SB_B1, "confirm": "1"}),
        ("POST", release_url(WITH_GF) + "/delete", {"confirm": "1"}),
        ("POST", f"/portfolios/{MUSTER}/releases", {"name": "Eingeschleust"}),
        ("POST", f"/portfolios/{MUSTER}/members", {"address": "x@y.example"}),
        ("POST", f"/portfolios/{MUSTER}/members/rename", {"member": SB_A1, "display_name": "X"}),
        ("POST", f"/portfolios/{MUSTER}/members/remove", {"member": SB_A1, "confirm": "1"}),
    ]
    for method, url, data in real:
        response: httpx.Response
        if method == "GET":
            response = await browser.client.get(url)
        else:
            response = await browser.post(url, data, from_page="/")
        assert response.status_code == 404, f"{method} {url}: {response.status_code}"
    changed = await web.sql(
        "SELECT e.id FROM events e JOIN portfolios p ON p.id = e.portfolio_id "
        "WHERE p.name = :p AND e.actor = :a",
        p=MUSTER,
        a=f"web:{ZWEI}",
    )
    assert changed == []
    # Their own portfolio's pages they reach.
    assert (await browser.client.get(f"/portfolios/{OTHER}/members")).status_code == 200


# --- the collision guard's settings (docs/collisions.md) ------------------------------------------------


async def test_the_collision_guard_is_set_on_the_release_page(web: ConsoleUnderTest, op: Browser) -> None:
    page = (await op.client.get(release_url(WITH_GF))).text
    assert '<option value="default" selected>' in page
    assert 'id="hold_timeout" name="hold_timeout" value="1d"' in page
    fields = {"share_vorgaenge": "on", "read_sync": "answered", "backfill": "all", "revoked_copies": "remove"}
    guard = {"collision_guard": "notify", "hold_timeout": "4h", "after_hold_timeout": "withdraw"}
    answer = await op.post(release_url(WITH_GF), {**fields, **guard})
    assert answer.status_code == 303, answer.text
    [row] = await web.sql(
        "SELECT collision_guard, hold_timeout, after_hold_timeout FROM releases WHERE name = :n", n=WITH_GF
    )
    assert tuple(row) == ("notify", 14400, "withdraw")
    shown = (await op.client.get(release_url(WITH_GF))).text
    assert '<option value="notify" selected>' in shown
    assert 'value="4h"' in shown

    bad = await op.post(release_url(WITH_GF), {**fields, **guard, "hold_timeout": "ewig"})
    assert bad.status_code == 400
    assert "zwischen 1m und 30d" in problem(bad.text, "hold_timeout")
    assert 'value="ewig"' in bad.text, "kept as typed"
    # Holding where nothing is shared is refused with the directory's reason.
    no_sharing = {**fields, "share_vorgaenge": "", "collision_guard": "hold", "hold_timeout": "4h"}
    refused = await op.post(release_url(WITH_GF), {**no_sharing, "confirm": "1"})
    assert refused.status_code == 409
    assert "does not share" in html.unescape(refused.text)
