"""The layering of STYLE.md, enforced: server → clients, hydrator → clients,
nothing else; storage never imports servicers; the core imports no grpc."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROOTS = {
    "client": ROOT / "clients" / "python" / "sessiond" / "client",
    "api": ROOT / "clients" / "python" / "sessiond" / "api",
    "hydrator": ROOT / "hydrator" / "sessiond" / "hydrator",
    "server": ROOT / "server" / "sessiond" / "server",
}

# layer -> module prefixes it must never import
FORBIDDEN = {
    "client": ("sessiond.server", "sessiond.hydrator"),
    "api": ("sessiond.server", "sessiond.hydrator", "sessiond.client"),
    "hydrator": ("sessiond.server",),
    "server": ("sessiond.hydrator",),
}


def _imports(path: Path, package: str) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append(module)
    return found


def _modules(layer: str) -> list[tuple[Path, str]]:
    root = ROOTS[layer]
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent.parent).with_suffix("")
        package = ".".join(rel.parts[:-1])
        out.append((path, package))
    return out


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_downwards(layer: str) -> None:
    violations = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path, package in _modules(layer)
        for module in _imports(path, package)
        if module.startswith(FORBIDDEN[layer])
    ]
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize(
    ("subpackage", "forbidden"),
    [
        ("core", ("grpc", "sessiond.server.servicers", "sessiond.api")),
        ("storage", ("grpc", "sessiond.server.servicers", "sessiond.server.core")),
    ],
)
def test_server_inner_layers(subpackage: str, forbidden: tuple[str, ...]) -> None:
    root = ROOTS["server"] / subpackage
    violations = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path, package in _modules("server")
        if root in path.parents
        for module in _imports(path, package)
        if module == forbidden or module.startswith(forbidden)
    ]
    assert not violations, "\n".join(violations)


def test_no_sessiond_init_at_namespace_level() -> None:
    # PEP 420: three source roots share `sessiond`; an __init__.py would shadow the others.
    for root in ("server", "hydrator", "clients/python"):
        assert not (ROOT / root / "sessiond" / "__init__.py").exists()
