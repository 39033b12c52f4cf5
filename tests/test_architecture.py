"""The package's layers: every import between top-level units of ``prm`` points down.

The order is the README's architecture: data below models, models below the re-rankers, the
registry above both, training above the registry, and the pipelines, serving and the CLI on
top. A unit may import any unit below it and none above or beside it, so there are no cycles.
Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "prm"

LAYERS = [
    {"prm", "config", "io", "threads", "allocator"},  # the package root only maps lazy public names
    {"data"},
    {"models"},
    {"evaluation"},
    {"rankers", "pretrain"},
    {"registry"},
    {"training"},
    {"pipeline", "estimators"},
    {"experiments", "serving"},
    {"deployment"},
    {"cli"},
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "prm"


def imports() -> list[tuple[str, str, str]]:
    """(importing file, its unit, imported unit) for every ``prm`` import of the package."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        unit = unit_of(".".join(relative.parts))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prm"):
                found.append((str(relative), unit, unit_of(node.module)))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("prm."):
                        found.append((str(relative), unit, unit_of(alias.name)))
    return found


def test_every_unit_has_a_layer() -> None:
    units = {path.stem if path.is_file() else path.name for path in PACKAGE.iterdir()}
    units = {u for u in units if not u.startswith(("_", ".")) and u not in ("py", "configs")}
    assert units - {"__init__"} <= set(RANK), units - set(RANK)


def test_imports_point_down() -> None:
    upward = [
        f"{path}: {unit} imports {target}"
        for path, unit, target in imports()
        if target != unit and RANK[target] >= RANK[unit] and unit != "prm"
    ]
    assert not upward, "\n".join(upward)
