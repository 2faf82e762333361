"""The package's structural rules, read from the source (AST and text, nothing run): no module over 450
lines, no import circle, llama-server's `/health` requested from one module outside the gateway, and its
`--rpc` command line built in one module. Each test names every offender in one message."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sollol_ops"
MAX_LINES = 450
HTTP_MODULE = "sollol_ops.serve.server_http"  # the one client of llama-server's HTTP API outside the gateway
COMMAND_MODULE = "sollol_ops.serve.command"  # the one builder of llama-server's command line


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _imports(name: str, path: Path) -> set[str]:
    """The sollol_ops modules that ``name`` imports, at module level or inside a function (both count);
    `from pkg import mod` counts as importing pkg.mod (not pkg's __init__) when that is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" for a in node.names]
            modules = [n for n in names if n in MODULES]
            found.update(modules or [base])  # `from pkg import mod` imports mod; `from mod import name`, mod
    deps = set()
    for target in found:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != name and target != "sollol_ops":
            deps.add(target)
    return deps


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def _strings(path: Path) -> list[str]:
    return [
        node.value for node in ast.walk(_tree(path)) if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def _code_strings(path: Path) -> list[str]:
    """String constants that are not docstrings (a docstring that mentions /health is not a request),
    f-string parts included."""
    tree = _tree(path)
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
    ]


def test_no_module_is_over_450_lines() -> None:
    long = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    over = sorted(f"{n} ({lines})" for n, lines in long.items() if lines > MAX_LINES)
    assert not over, f"modules over {MAX_LINES} lines: {', '.join(over)}"


def test_no_import_circle() -> None:
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    circles = _cycles(graph)
    assert not circles, "import circles (module- and function-level imports): " + "; ".join(
        " <-> ".join(group) for group in circles
    )


def test_llama_server_health_is_requested_from_one_module() -> None:
    """Outside the gateway (which relays to its upstreams itself), only HTTP_MODULE asks llama-server's
    /health: a string that is a request line or URL path `/health` (help texts and docstrings aside)."""
    offenders = sorted(
        name
        for name, path in MODULES.items()
        if not name.startswith("sollol_ops.gateway")
        and name != HTTP_MODULE
        and any(s.startswith("GET /health") or s.endswith("/health") for s in _code_strings(path))
    )
    assert not offenders, f"/health requested outside {HTTP_MODULE}: {', '.join(offenders)}"


def test_the_rpc_command_line_is_built_in_one_module() -> None:
    """Only COMMAND_MODULE puts `--rpc` into an argv (MANAGED_FLAGS there names it too)."""
    offenders = sorted(name for name, path in MODULES.items() if name != COMMAND_MODULE and "--rpc" in _strings(path))
    assert not offenders, f"`--rpc` command lines built outside {COMMAND_MODULE}: {', '.join(offenders)}"


@pytest.mark.parametrize("module", [HTTP_MODULE, COMMAND_MODULE])
def test_the_named_owners_exist(module: str) -> None:
    assert module in MODULES
