"""The configuration reference (docs/config.md), generated from the dataclasses in config.py.

    motioncrafter config reference > docs/config.md

Each field's description is its trailing `# comment` in config.py, so the
reference cannot drift from the code (a test compares docs/config.md with this output).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import tokenize
import typing

from motioncrafter.config import Config


def _field_comments(cls: type) -> dict[str, str]:
    """field name -> the comment on its line in the class body."""
    source = inspect.getsource(cls)
    comments = {t.start[0]: t.string.lstrip("# ").strip()
                for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT}
    node = ast.parse(source).body[0]
    assert isinstance(node, ast.ClassDef)
    body = node.body
    return {node.target.id: comments.get(node.lineno, "")
            for node in body if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}


def _default(f: dataclasses.Field) -> str:
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_reference() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from `motioncrafter/config.py` by `motioncrafter config reference`; do not edit by hand.",
        "",
        "One TOML or YAML file holds every section; `--set section.key=value` overrides a field on the",
        "command line, and `motioncrafter config show` prints the effective configuration. Unknown keys",
        "are errors that name the key and suggest the closest one. A manifest row may override fields of",
        "`tune`, `adapter` and `render` for its clip (`overrides` column).",
        "",
        "```toml",
        "[tune]",
        "steps = 400",
        "",
        "[pipeline]",
        "num_gangs = 4",
        "```",
    ]
    hints = typing.get_type_hints(Config)
    for section in dataclasses.fields(Config):
        cls: type = hints[section.name]
        doc = inspect.getdoc(cls)
        lines += ["", f"## `[{section.name}]`", ""]
        if doc and not doc.startswith(cls.__name__ + "("):  # dataclasses invent a docstring when there is none
            lines += [doc, ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        comments = _field_comments(cls)
        for f in dataclasses.fields(cls):
            lines.append(f"| `{f.name}` | `{_cell(str(f.type))}` | `{_cell(_default(f))}` | {_cell(comments.get(f.name, ''))} |")
    return "\n".join(lines) + "\n"

