"""The layer rule of docs/architecture.md, checked against the imports of every module.

The table in the doc is the rule: each package may import only the packages its row names.
Lazy imports inside functions count. No module imports a private name from another package
(tools/ and benchmarks/ included), the table has no cycle, and neither has the graph of
imports between the modules of detkd/ (a circle inside one package, which the table cannot
see; imports inside functions and under ``TYPE_CHECKING`` count: a circle is a tangle of
responsibilities even where Python happens to resolve it).
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


def module_name(path: Path, root: Path) -> str:
    """``detkd/distill/methods/base.py`` -> ``detkd.distill.methods.base``; a package's
    ``__init__.py`` is the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the package at ``root`` it imports, anywhere in its file.

    ``from a.b import c`` imports the module ``a.b.c`` where there is one, else ``a.b``;
    relative imports are resolved against the importing module's package. The root package
    itself is left out: Python runs it before any of its modules whatever they import, and
    its lazy re-export (``detkd.load_model``) is a door above every layer."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    del files[root.name]
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                parts = package.split(".")
                base = parts[:len(parts) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in files else module for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in files and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One circle of imports as ``[a, b, ..., a]``, or [] if there is none (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


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


def test_no_import_circle_between_modules():
    cycle = find_cycle(module_graph(REPO / "detkd"))
    assert cycle == [], "import circle: " + " -> ".join(cycle)


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


def test_the_checker_sees_an_import_circle(tmp_path):
    """A circle closed by an import inside a function and a relative one is found; without it, none."""
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("from pkg.sub.a import f\n")
    (root / "sub" / "a.py").write_text("from .b import g\n\ndef f():\n    return g()\n")
    (root / "sub" / "b.py").write_text("def g():\n    from pkg.sub import c\n    return c\n")
    (root / "sub" / "c.py").write_text("import pkg.sub.a\n")
    graph = module_graph(root)
    assert graph["pkg.sub.b"] == {"pkg.sub.c"} and graph["pkg.sub.a"] == {"pkg.sub.b"}
    assert find_cycle(graph) == ["pkg.sub.a", "pkg.sub.b", "pkg.sub.c", "pkg.sub.a"]
    (root / "sub" / "c.py").write_text("import torch\n")
    assert find_cycle(module_graph(root)) == []


MAX_FUNCTION_LINES = 80


def checked_modules() -> list[Path]:
    return sorted((REPO / "detkd").rglob("*.py"))


def long_functions(path: Path) -> list[str]:
    """``name:line (n lines)`` of every function or method over MAX_FUNCTION_LINES."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{node.name}:{node.lineno} ({length} lines)")
    return found


def mutable_defaults(path: Path) -> list[str]:
    """``name:line`` of every function whose default is a list, dict or set (a display, a
    comprehension or a ``list()``/``dict()``/``set()`` call): one object shared by all calls."""
    mutable = (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for d in [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]:
                call = isinstance(d, ast.Call) and isinstance(d.func, ast.Name) and d.func.id in ("list", "dict", "set")
                if isinstance(d, mutable) or call:
                    found.append(f"{getattr(node, 'name', 'lambda')}:{node.lineno}")
    return found


def test_no_function_is_longer_than_80_lines():
    """Every function reads on one screen: the training loop as named steps, a report as
    measure, aggregate, render."""
    modules = checked_modules()
    assert REPO / "detkd" / "engine" / "trainer.py" in modules  # the checker sees the loop
    assert [f"{p.relative_to(REPO)} {f}" for p in modules for f in long_functions(p)] == []


def test_no_mutable_default_arguments():
    assert [f"{p.relative_to(REPO)} {f}" for p in checked_modules() for f in mutable_defaults(p)] == []


def test_the_size_checkers_see_a_broken_rule(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(a, b=[], *, c={}):\n" + "    pass\n" * MAX_FUNCTION_LINES
                   + "def g(x=list()):\n    return lambda y=set(): y\n")
    assert long_functions(bad) == [f"f:1 ({MAX_FUNCTION_LINES + 1} lines)"]
    assert mutable_defaults(bad) == ["f:1", "f:1", "g:82", "lambda:83"]
