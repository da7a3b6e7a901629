"""The Python versions the project claims are ones it and its dependencies run on, and it says so once."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _claimed() -> list[Version]:
    """Every Python minor version pyproject's requires-python admits (3.8 to 3.19 looked at)."""
    spec = SpecifierSet(_project()["requires-python"])
    return [v for v in (Version(f"3.{minor}") for minor in range(8, 20)) if v in spec]


def test_every_claimed_python_is_one_each_installed_dependency_supports():
    claimed = _claimed()
    assert claimed, "requires-python admits no Python 3 version"
    for dependency in map(Requirement, _project()["dependencies"]):
        needs = metadata.metadata(dependency.name).get("Requires-Python")
        if needs:
            spec = SpecifierSet(needs)
            unsupported = [str(v) for v in claimed if v not in spec]
            assert not unsupported, f"{dependency.name} {metadata.version(dependency.name)} needs Python {needs}, " \
                                    f"but pyproject claims {unsupported}"


def test_the_standard_library_modules_used_exist_in_every_claimed_python():
    # tomllib (config.py, cluster tests) arrived in Python 3.11
    uses_tomllib = any("import tomllib" in p.read_text() for p in (ROOT / "motioncrafter").rglob("*.py"))
    assert not uses_tomllib or min(_claimed()) >= Version("3.11")


def test_the_readme_says_what_pyproject_says():
    claimed = _claimed()
    (first, last) = re.findall(r"Python (3\.\d+)-(3\.\d+)", (ROOT / "README.md").read_text())[0]
    assert (Version(first), Version(last)) == (claimed[0], claimed[-1])
    assert len(re.findall(r"Python 3\.\d+", (ROOT / "README.md").read_text())) == 1  # said once
