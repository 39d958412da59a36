"""The architecture's import rules, walked over every module (function-local imports included):

    cache_schema   the contract between the phases: imports nothing of ours
    pipeline       the shared core (models, templates, positions, targets, workflow, fingerprints,
                   the manifest contract): imports nothing of ours but itself
    teacher_dump   phase 1 ┐ the core and cache_schema only; never each other
    student_train  phase 2 ┘
    toy_world      the embedded toy world (and the model presets, the tokenizer trainer): a leaf on the core
    evaluation     scoring (held-out exact match, paired intervals, transfer, the layer probe): a leaf on the core
    alignkd_harness  the benchmark-harness model class (optional extra): the core and evaluation
    alignkd        the CLI: may compose everything; only it and benchmarks import it

and the core holds only what is shared: every module under pipeline/ is imported, directly or through
other modules, by teacher_dump, student_train or the manifest builder (`pipeline.data.manifest`);
what only the commands use lives with them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = ("cache_schema", "pipeline", "teacher_dump", "student_train", "toy_world", "evaluation", "alignkd_harness",
        "alignkd", "benchmarks")
ALLOWED = {
    "cache_schema": {"cache_schema"},
    "pipeline": {"pipeline"},
    "teacher_dump": {"teacher_dump", "pipeline", "cache_schema"},
    "student_train": {"student_train", "pipeline", "cache_schema"},
    "toy_world": {"toy_world", "pipeline"},
    "evaluation": {"evaluation", "pipeline"},
    "alignkd_harness": {"alignkd_harness", "pipeline", "evaluation"},
    "alignkd": set(OURS),
    "benchmarks": set(OURS),
}


def _imports(path: Path) -> set[tuple[str, int]]:
    """(top-level package of ours, line) for every absolute import in the file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        out |= {(n.split(".")[0], node.lineno) for n in names if n.split(".")[0] in OURS}
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_its_layer_allows(package):
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"no modules under {package}/"
    bad = [f"{f.relative_to(REPO)}:{line} imports {top}" for f in files for top, line in sorted(_imports(f))
           if top not in ALLOWED[package]]
    assert not bad, f"{package} may import only {sorted(ALLOWED[package])}:\n" + "\n".join(bad)


def test_the_rules_catch_a_forbidden_import(tmp_path):
    # the walker sees function-local imports too (the phases import heavy modules lazily)
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from teacher_dump.plan import x\n    import student_train.recipe\n")
    assert {top for top, _ in _imports(f)} == {"teacher_dump", "student_train"}


# What the core is for: the phases and the manifest builder (`alignkd data build`, which runs before them).
CORE_USERS = ("teacher_dump", "student_train", "pipeline.data.manifest")


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """module -> the modules of ours it imports (function-local imports included). `from a.b import c`
    counts a.b.c when c is a module, else a.b; importing a module also imports its parent packages."""
    paths = {_module_name(f, root): f for pkg in packages for f in (root / pkg).rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or node.level):
                if node.level:  # relative: resolve against this module's package
                    base = name.split(".")[: len(name.split(".")) - node.level + (path.name == "__init__.py")]
                    mod = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    mod = node.module
                targets |= {mod} | {f"{mod}.{a.name}" for a in node.names}
        deps = set()
        for t in targets:
            while t and t not in paths:
                t = t.rpartition(".")[0]
            parts = t.split(".") if t else []
            deps |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        graph[name] = deps - {name}
    return graph


def _unused_core(root: Path, packages: tuple[str, ...], users: tuple[str, ...]) -> list[str]:
    """pipeline modules that no module of `users` (a package or a module, and what they import) reaches."""
    graph = _module_graph(root, packages)
    todo = [m for m in graph if any(m == u or m.startswith(u + ".") for u in users)]
    seen = set()
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph.get(m, ())
    return sorted(m for m in graph if m.split(".")[0] == "pipeline" and m not in seen)


def test_every_core_module_is_used_by_a_phase_or_the_manifest_builder():
    unused = _unused_core(REPO, ("pipeline", "teacher_dump", "student_train"), CORE_USERS)
    assert not unused, ("pipeline/ is the core the phases share; these modules are imported by neither phase nor "
                        f"the manifest builder, so they belong with the commands that use them: {unused}")


def test_the_core_rule_catches_an_unused_module(tmp_path):
    for rel, text in {"pipeline/__init__.py": "", "pipeline/a.py": "", "pipeline/b.py": "from pipeline import a\n",
                      "pipeline/sub/__init__.py": "", "pipeline/sub/c.py": "from . import d\n",
                      "pipeline/sub/d.py": "", "pipeline/orphan.py": "import pipeline.a\n",
                      "teacher_dump/__init__.py": "", "teacher_dump/x.py": "def f():\n    import pipeline.b\n",
                      "student_train/__init__.py": "from pipeline.sub.c import y\n"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert _unused_core(tmp_path, ("pipeline", "teacher_dump", "student_train"), CORE_USERS) == ["pipeline.orphan"]


def _direct_imports(package: str) -> dict[str, set[str]]:
    """{module: modules of `package` it names in an import (function-local included; parent packages
    not counted, unlike _module_graph, so a package and its submodules form no cycle); `from a import
    b` names the module a.b when there is one)."""
    mods = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
            for p in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                         for a in node.names}
        graph[mod] = {d for d in deps if d in mods and d != mod}
    return graph


def test_no_import_cycle_inside_student_train():
    """A run is resolved by the CLI (student_train.run) and read by the ranks (launch → recipe):
    no module of phase 2 imports one that imports it back (launch ⇄ recipe was such a cycle)."""
    graph = _direct_imports("student_train")
    assert "student_train.launch" in graph["student_train.cli"]  # the walk sees the imports
    cycles = []

    def visit(mod: str, path: list[str]) -> None:
        for dep in sorted(graph[mod]):
            if dep in path:
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif len(path) < len(graph):
                visit(dep, path + [dep])

    for mod in sorted(graph):
        visit(mod, [mod])
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles)))
