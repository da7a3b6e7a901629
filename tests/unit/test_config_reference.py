"""docs/config.md is generated from config.py: it must match, and document every field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from motioncrafter.config import Config
from motioncrafter.config_reference import render_reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_docs_config_md_is_the_generated_reference() -> None:
    assert DOC.read_text() == render_reference(), "docs/config.md is stale: run `motioncrafter config reference > docs/config.md`"


def test_every_field_of_every_section_is_documented_with_a_meaning() -> None:
    text = render_reference()
    for section in dataclasses.fields(Config):
        assert f"## `[{section.name}]`" in text
        for f in dataclasses.fields(section.default_factory):
            line = next(line for line in text.splitlines() if line.startswith(f"| `{f.name}` |") and line in
                        text.split(f"## `[{section.name}]`")[1].split("\n## ")[0])
            assert not line.rstrip().endswith("|  |"), f"{section.name}.{f.name} has no comment in config.py"
