"""The packages' layering: the library imports neither Ray nor the pipelines, and neither package imports the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported(package: str) -> dict[str, set[str]]:
    """file -> top-level names of every module it imports (at any depth of the code)."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize("package, forbidden", [("motioncrafter", {"pipelines", "ray", "motioncrafter_cli"}),
                                                ("pipelines", {"motioncrafter_cli"})])
def test_package_does_not_import(package: str, forbidden: set[str]) -> None:
    offending = {f: sorted(names & forbidden) for f, names in imported(package).items() if names & forbidden}
    assert not offending, offending
    assert imported(package)  # the walk found the package's files
