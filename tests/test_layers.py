"""The import layers of gateway/ hold: domain pure, storage below its users, no upward import, no loop.

Every module under gateway/ is parsed with ``ast`` (nothing is imported); each import is an edge of the
module graph, wherever it stands. An import inside a function or under ``if TYPE_CHECKING:`` counts like
one at the top: it is as much a dependency for a reader and for mypy, and counting only top-level imports
would let an upward import or a loop hide by moving one line into a function or under TYPE_CHECKING
(which is how the loop between ``mailbox/imap.py`` and ``mailbox/imap_idle.py`` is written today).

``LAYERS`` is the diagram in docs/architecture.md, top to bottom; a test checks that the two agree. A
module may import modules of its own component and of any lower layer, nothing of its layer's other
components and nothing above. The checks are plain functions over a module graph, so the tests at the end
feed them made-up graphs and show each can fail.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "gateway"
ARCHITECTURE = REPO / "docs" / "architecture.md"

# Top to bottom, as drawn in docs/architecture.md; the components of one layer do not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("service", "supervisor"),
    ("stages", "web"),
    ("mailbox", "admin", "routing", "senderauth"),
    ("db",),
    ("config", "keys", "logs", "metrics", "tls", "workers", "smtp_replies"),
    ("domain", "errors", "__init__"),
)

# The modules of each component, as prefixes; a component not named here is ``gateway.<name>``.
COMPONENTS: Mapping[str, tuple[str, ...]] = {
    "cli": ("gateway.cli", "gateway.__main__"),
    "__init__": ("gateway",),  # the package itself: __version__
}

# What gateway/db/ may import from the gateway: storage works on domain values and raises the error tree;
# gateway.db.senderauth reads the listener settings (gateway.config) to judge ``sender_auth: off``.
STORAGE_MAY_IMPORT = ("gateway.db", "gateway.domain", "gateway.errors", "gateway.config")

# What gateway/domain/ must never import: I/O (DESIGN: no asyncio, no SQLAlchemy, no sockets).
IO_MODULES = (
    "asyncio",
    "socket",
    "ssl",
    "selectors",
    "subprocess",
    "threading",
    "concurrent",
    "sqlalchemy",
    "aiosqlite",
    "asyncpg",
    "psycopg",
    "aiosmtpd",
    "aiosmtplib",
    "aioimaplib",
    "smtplib",
    "imaplib",
    "dns",
)

# KNOWN EXCEPTIONS: edges that break a rule, each with the change that would remove it. Every check
# leaves these out; test_known_exceptions_still_exist fails once one is gone, so the list only shrinks.
# Empty since issue 14: keep it so.
KNOWN_EXCEPTIONS: Mapping[tuple[str, str], str] = {}


# --- reading the imports ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Import:
    source: str
    target: str
    line: int
    where: str  # "top", "function" or "type-checking"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_in(source: str, module: str, *, is_package: bool, known: Iterable[str]) -> list[Import]:
    """Every import in ``source`` (the text of ``module``), relative ones resolved; ``from P import N``
    is an edge to P and, when ``N`` is a module in ``known``, to P.N as well."""
    known = set(known)
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(module, a.name, child.lineno, where) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    parent = ".".join(base + ([child.module] if child.module else []))
                else:
                    parent = child.module or ""
                found.append(Import(module, parent, child.lineno, where))
                found.extend(
                    Import(module, f"{parent}.{a.name}", child.lineno, where)
                    for a in child.names
                    if f"{parent}.{a.name}" in known
                )
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, "function")
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, "type-checking")
            else:
                visit(child, where)

    visit(ast.parse(source), "top")
    return [i for i in found if i.target != module]


@functools.cache
def gateway_imports() -> tuple[Import, ...]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in paths}
    return tuple(
        i
        for p in paths
        for i in imports_in(
            p.read_text(encoding="utf-8"), module_name(p), is_package=p.name == "__init__.py", known=known
        )
    )


def graph_of(imports: Iterable[Import], modules: Iterable[str] = ()) -> dict[str, set[str]]:
    """Module -> the gateway modules it imports (outside imports left out), known exceptions left out."""
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for i in imports:
        graph.setdefault(i.source, set())
        if _in(i.target, "gateway") and (i.source, i.target) not in KNOWN_EXCEPTIONS:
            graph[i.source].add(i.target)
    return graph


def real_graph() -> dict[str, set[str]]:
    return graph_of(gateway_imports(), (module_name(p) for p in PACKAGE.rglob("*.py")))


# --- the rules, over any module graph --------------------------------------------------------------------


def _in(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def component_of(module: str) -> str | None:
    """The component a module belongs to (the longest matching prefix), None when it has no place."""
    best: tuple[int, str] | None = None
    for layer in LAYERS:
        for component in layer:
            for prefix in COMPONENTS.get(component, (f"gateway.{component}",)):
                # "gateway" is the package's own __init__ only, not everything under it.
                inside = module == prefix if prefix == "gateway" else _in(module, prefix)
                if inside and (best is None or len(prefix) > best[0]):
                    best = (len(prefix), component)
    return best[1] if best else None


def layer_of(component: str) -> int:
    return next(n for n, layer in enumerate(LAYERS) if component in layer)


def unplaced(graph: Mapping[str, set[str]]) -> list[str]:
    return sorted(m for m in graph if component_of(m) is None)


def upward_imports(graph: Mapping[str, set[str]]) -> list[str]:
    """Imports of a component of the same layer or of a higher one."""
    found = []
    for source, targets in sorted(graph.items()):
        here = component_of(source)
        for target in sorted(targets):
            there = component_of(target)
            if here is None or there is None or here == there:
                continue
            if layer_of(there) <= layer_of(here):
                how = "its own layer" if layer_of(there) == layer_of(here) else "a higher layer"
                found.append(f"{source} ({here}) imports {target} ({there}, {how})")
    return found


def domain_leaks(graph: Mapping[str, set[str]]) -> list[str]:
    return [
        f"{source} imports {target}"
        for source, targets in sorted(graph.items())
        if _in(source, "gateway.domain")
        for target in sorted(targets)
        if not _in(target, "gateway.domain")
    ]


def storage_leaks(graph: Mapping[str, set[str]]) -> list[str]:
    return [
        f"{source} imports {target}"
        for source, targets in sorted(graph.items())
        if _in(source, "gateway.db")
        for target in sorted(targets)
        if not any(_in(target, allowed) for allowed in STORAGE_MAY_IMPORT)
    ]


def import_loops(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(loops)


def diagram_layers(text: str) -> list[tuple[str, ...]]:
    """The layers drawn between the ``layers:begin`` and ``layers:end`` markers of docs/architecture.md:
    each line that is not a connector names its components before the first run of two spaces, joined
    by `` · ``."""
    block = text.split("<!-- layers:begin -->", 1)[1].split("<!-- layers:end -->", 1)[0]
    layers = []
    for line in block.splitlines():
        line = line.strip()
        if not line or line.startswith("```") or set(line) <= set("│|↓v "):
            continue
        names = re.split(r"\s{2,}", line)[0]
        layers.append(tuple(n.strip() for n in names.split("·")))
    return layers


def _lines(found: Iterable[object]) -> str:
    return "\n  ".join(str(f) for f in found)


# --- the gateway as it is --------------------------------------------------------------------------------


def test_every_module_has_a_place_in_the_layers() -> None:
    assert not unplaced(real_graph()), "add these to LAYERS and to docs/architecture.md:\n  " + _lines(
        unplaced(real_graph())
    )


def test_domain_imports_nothing_of_the_gateway_outside_domain() -> None:
    leaks = domain_leaks(real_graph())
    assert not leaks, "gateway/domain/ is pure; move what it needs into domain:\n  " + _lines(leaks)


def test_domain_does_no_io() -> None:
    found = [
        f"{i.source}:{i.line} imports {i.target}"
        for i in gateway_imports()
        if _in(i.source, "gateway.domain") and any(_in(i.target, io) for io in IO_MODULES)
    ]
    assert not found, "gateway/domain/ does no I/O:\n  " + _lines(found)


def test_storage_imports_only_storage_domain_errors_and_config() -> None:
    leaks = storage_leaks(real_graph())
    assert not leaks, f"gateway/db/ may import only {', '.join(STORAGE_MAY_IMPORT)}:\n  " + _lines(leaks)


def test_no_import_loop() -> None:
    loops = import_loops(real_graph())
    assert not loops, "import loops between gateway modules:\n  " + _lines(
        " <-> ".join(loop) for loop in loops
    )


def test_no_upward_import() -> None:
    found = upward_imports(real_graph())
    assert not found, "imports against the layers of docs/architecture.md:\n  " + _lines(found)


def test_the_diagram_in_architecture_md_draws_these_layers() -> None:
    assert diagram_layers(ARCHITECTURE.read_text(encoding="utf-8")) == list(LAYERS)


def test_known_exceptions_still_exist() -> None:
    edges = {(i.source, i.target) for i in gateway_imports()}
    gone = [f"{source} -> {target}: {why}" for (source, target), why in KNOWN_EXCEPTIONS.items()]
    gone = [g for g, edge in zip(gone, KNOWN_EXCEPTIONS, strict=True) if edge not in edges]
    assert not gone, "these are fixed: take them out of KNOWN_EXCEPTIONS:\n  " + _lines(gone)


# --- the checks can fail ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("gateway.db.messages", "gateway.stages.acceptance"),  # storage reaching up into a stage
        ("gateway.stages.fanout", "gateway.service"),
        ("gateway.domain.audience", "gateway.errors"),  # errors sits beside domain, not below it
        ("gateway.routing.live", "gateway.mailbox.base"),  # peers of one layer
        ("gateway.config", "gateway.db.models"),
        ("gateway.mailbox.imap", "gateway.cli.root"),
    ],
)
def test_an_upward_import_is_caught(source: str, target: str) -> None:
    graph = {"gateway.db.models": {"gateway.domain.model"}, source: {target}}
    (found,) = upward_imports(graph)
    assert found.startswith(f"{source} ({component_of(source)}) imports {target} ({component_of(target)}, ")


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("gateway.cli.views", "gateway.admin.api"),
        ("gateway.stages.reply", "gateway.db.replies"),
        ("gateway.db.senderauth", "gateway.config"),
        ("gateway.mailbox.imap", "gateway.mailbox.base"),  # within a component
        ("gateway.cli.root", "gateway"),
    ],
)
def test_a_downward_import_passes(source: str, target: str) -> None:
    assert upward_imports({source: {target}}) == []


def test_a_loop_is_caught_and_named() -> None:
    graph = {
        "gateway.mailbox.imap": {"gateway.mailbox.imap_idle", "gateway.mailbox.base"},
        "gateway.mailbox.imap_idle": {"gateway.mailbox.imap"},
        "gateway.db.a": {"gateway.db.b"},
        "gateway.db.b": {"gateway.db.c"},
        "gateway.db.c": {"gateway.db.a"},
        "gateway.db.d": {"gateway.db.a"},
    }
    assert import_loops(graph) == [
        ["gateway.db.a", "gateway.db.b", "gateway.db.c"],
        ["gateway.mailbox.imap", "gateway.mailbox.imap_idle"],
    ]


def test_a_domain_leak_and_a_storage_leak_are_caught() -> None:
    graph = {
        "gateway.domain.rules": {"gateway.domain.model", "gateway.errors"},
        "gateway.db.names": {"gateway.db.models", "gateway.routing.files", "gateway.config"},
    }
    assert domain_leaks(graph) == ["gateway.domain.rules imports gateway.errors"]
    assert storage_leaks(graph) == ["gateway.db.names imports gateway.routing.files"]


def test_a_new_top_level_module_needs_a_place() -> None:
    assert unplaced({"gateway.utils": set(), "gateway.db.x": set()}) == ["gateway.utils"]


def test_imports_in_functions_and_under_type_checking_count() -> None:
    source = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "from gateway.domain import model\n"
        "if TYPE_CHECKING:\n"
        "    from gateway.stages.fanout import FanOut\n"
        "def later() -> None:\n"
        "    import gateway.service\n"
    )
    known = {"gateway.domain.model", "gateway.stages.fanout", "gateway.service"}
    found = imports_in(source, "gateway.db.queue", is_package=False, known=known)
    edges = {(i.target, i.where) for i in found if i.target.startswith("gateway")}
    assert edges == {
        ("gateway.domain", "top"),
        ("gateway.domain.model", "top"),
        ("gateway.stages.fanout", "type-checking"),
        ("gateway.service", "function"),
    }
    assert len(upward_imports(graph_of(found))) == 2


def test_relative_imports_resolve() -> None:
    source = "from . import base\nfrom .imap import ImapMailbox\nfrom ..domain import model\n"
    known = {"gateway.mailbox.base", "gateway.mailbox.imap", "gateway.domain.model"}
    found = imports_in(source, "gateway.mailbox.routed", is_package=False, known=known)
    assert {i.target for i in found} == {
        "gateway.mailbox",
        "gateway.mailbox.base",
        "gateway.mailbox.imap",
        "gateway.domain",
        "gateway.domain.model",
    }
    in_package = imports_in("from . import base\n", "gateway.mailbox", is_package=True, known=known)
    assert {i.target for i in in_package} == {"gateway.mailbox.base"}


def test_the_diagram_is_read_from_its_markers() -> None:
    text = (
        "intro\n<!-- layers:begin -->\n```\ncli            the commands\n   │\n"
        "mailbox · admin  peers\n   │\ndomain · errors  pure\n```\n<!-- layers:end -->\n"
    )
    assert diagram_layers(text) == [("cli",), ("mailbox", "admin"), ("domain", "errors")]
