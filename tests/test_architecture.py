"""The layer rule of docs/architecture.md, checked against the imports of every module.

The table in the doc is the rule: each package may import only the packages its row names.
Lazy imports inside functions count. No module imports a private name from another package
(tools/ and benchmarks/ included), and the table has no cycle (so neither do the imports).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"


def allowed_imports() -> dict[str, set[str]]:
    rows = re.findall(r"^\| `(\w+)` \| ([^|]*) \|$", DOC.read_text(), flags=re.M)
    rule = {}
    for pkg, deps in rows:
        names = {d.strip() for d in deps.split(",")} - {"—", ""}
        rule[pkg] = names
    return rule


def detkd_imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported detkd module, imported names, line) of every import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("detkd"):
            found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("detkd")]
    return found


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_doc_lists_every_package_and_has_no_cycle():
    rule = allowed_imports()
    packages = {p.name for p in (REPO / "detkd").iterdir() if (p / "__init__.py").is_file()}
    packages |= {p.stem for p in (REPO / "detkd").glob("*.py") if p.stem != "__init__"}  # errors.py
    assert set(rule) == packages, "docs/architecture.md must list exactly the packages of detkd/"
    for pkg, deps in rule.items():
        assert deps <= set(rule), f"{pkg}: unknown packages {deps - set(rule)}"
    # Topological order exists: repeatedly remove packages whose dependencies are all removed.
    left = dict(rule)
    while left:
        free = [p for p, deps in left.items() if not deps & set(left)]
        assert free, f"cycle among {sorted(left)}"
        for p in free:
            del left[p]


def test_imports_follow_the_layers():
    rule = allowed_imports()
    broken = []
    for path in sorted((REPO / "detkd").rglob("*.py")):
        rel = path.relative_to(REPO)
        own = rel.parts[1] if len(rel.parts) > 2 else ""
        if own == "":  # detkd/__init__.py: the lazy load_model re-export only
            continue
        for module, _, line in detkd_imports(path):
            target = package_of(module)
            if target and target != own and target not in rule[own]:
                broken.append(f"{rel}:{line} imports {module} ({own} may import {sorted(rule[own])})")
    assert broken == []


def test_no_private_names_cross_packages():
    broken = []
    files = [*(REPO / "detkd").rglob("*.py"), *(REPO / "tools").glob("*.py"), *(REPO / "benchmarks").glob("*.py")]
    for path in sorted(files):
        rel = path.relative_to(REPO)
        own = rel.parts[1] if rel.parts[0] == "detkd" and len(rel.parts) > 2 else None
        for module, names, line in detkd_imports(path):
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private and package_of(module) != own:
                broken.append(f"{rel}:{line} imports {', '.join(private)} from {module}")
    assert broken == []


def test_the_checker_sees_a_broken_rule(tmp_path):
    """The checker itself: an upward import and a private import are found (a test that cannot fail is none)."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from detkd.engine.trainer import _train\n")
    (module, names, line), = detkd_imports(bad)
    assert (package_of(module), names, line) == ("engine", ["_train"], 2)
    assert "engine" not in allowed_imports()["evaluation"]
