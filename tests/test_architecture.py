"""The facade is closed: entry points reach the engine through its methods only. (Imports are
checked by lint-imports, docs/architecture.md; this checks what imports cannot see.)"""

from __future__ import annotations

import ast
from pathlib import Path

import imgsearch

PACKAGE = Path(imgsearch.__file__).parent
ENTRY_POINTS = ["api", "cloud", "evaluation", "cli.py", "bulk.py"]


def reaches_into_parts(source: str) -> list[int]:
    """The lines of `source` that name an object's `parts` (ImageSearch.parts)."""
    tree = ast.parse(source)
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "parts"]


def test_a_reach_into_the_parts_is_found() -> None:
    assert reaches_into_parts("x = 1\nservice.parts.catalog.key('x')\n") == [2]
    assert reaches_into_parts("service.search_text('dog')\nparts = 3\n") == []


def test_entry_points_never_reach_into_the_engines_parts() -> None:
    files = [
        file
        for name in ENTRY_POINTS
        for file in (
            (PACKAGE / name).rglob("*.py") if (PACKAGE / name).is_dir() else [PACKAGE / name]
        )
    ]
    assert len(files) > 20
    reaches = {
        str(file.relative_to(PACKAGE)): lines
        for file in files
        if (lines := reaches_into_parts(file.read_text()))
    }
    assert reaches == {}
