"""The module map of docs/architecture.md holds for the code: no histo module imports one its row does not allow."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _allowed() -> dict[str, set[str]]:
    """module -> the histo modules its row of the table allows ('anything' for the CLI)."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)` \|[^|]*\| ([^|]*) \|$", text, flags=re.M)
    out: dict[str, set[str]] = {}
    for module, imports in rows:
        cell = imports.strip()
        out[module] = {"*"} if cell == "anything" else ({m.strip() for m in cell.split(",")} - {"—", ""})
    return out


def _imports() -> dict[str, set[str]]:
    """module -> the other top-level histo modules its files import (lazy imports inside functions too)."""
    found: dict[str, set[str]] = {}
    for f in (ROOT / "histo").rglob("*.py"):
        rel = f.relative_to(ROOT / "histo")
        me = rel.parts[0].removesuffix(".py")
        if me in ("__init__", "__main__"):
            continue
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "histo" and len(parts) > 1 and parts[1] != me:
                    found.setdefault(me, set()).add(parts[1])
    return found


def test_every_module_has_a_row() -> None:
    allowed = _allowed()
    modules = {p.name.removesuffix(".py") for p in (ROOT / "histo").iterdir()
               if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())) and not p.name.startswith("__")}
    assert modules - set(allowed) == set(), "modules missing from docs/architecture.md's table"


def test_imports_follow_the_map() -> None:
    allowed = _allowed()
    bad = {me: sorted(used - allowed.get(me, set())) for me, used in _imports().items()
           if "*" not in allowed.get(me, set()) and used - allowed.get(me, set())}
    assert bad == {}, f"imports not allowed by docs/architecture.md: {bad}"


def test_nothing_imports_the_cli() -> None:
    assert [m for m, used in _imports().items() if "cli" in used] == []
