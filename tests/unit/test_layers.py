"""The layers DESIGN.md section 1 names, kept by a look at the imports: a
request crosses edge -> api -> services -> storage / db, never back up, and
only the edge and the views know Quart, Werkzeug or Hypercorn."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "quart_app"
HTTP_FRAMEWORKS = ("quart", "quart_schema", "werkzeug", "hypercorn", "h11", "h2")
UPPER_LAYERS = ("quart_app.edge", "quart_app.api", "quart_app.ops", "quart_app.state")


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def modules_in(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (PACKAGE / folder).rglob("*.py"))


@pytest.mark.parametrize("path", modules_in("services", "storage", "db"), ids=str)
def test_the_domain_and_below_import_no_layer_above(path: Path) -> None:
    upward = {n for n in imports_of(path) if n.startswith(UPPER_LAYERS)}
    assert upward == set()


@pytest.mark.parametrize("path", modules_in("services", "storage", "db"), ids=str)
def test_the_domain_and_below_know_no_http_framework(path: Path) -> None:
    frameworks = {n for n in imports_of(path) if n.split(".")[0] in HTTP_FRAMEWORKS}
    assert frameworks == set()


def test_only_the_state_module_keys_into_app_extensions() -> None:
    users = [
        p.relative_to(PACKAGE)
        for p in PACKAGE.rglob("*.py")
        if "extensions[" in p.read_text() and p.name != "state.py"
    ]
    assert users == []
