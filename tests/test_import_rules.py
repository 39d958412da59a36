"""The architecture's import rules, walked over every module (function-local imports included):

    cache_schema   the contract between the phases: imports nothing of ours
    pipeline       the shared core (models, templates, positions, targets, workflow, fingerprints,
                   the manifest contract): imports nothing of ours but itself
    teacher_dump   phase 1 ┐ the core and cache_schema only; never each other
    student_train  phase 2 ┘
    toy_world      the embedded toy world, a leaf on the core
    alignkd_harness  the benchmark-harness model class (optional extra): a leaf on the core
    alignkd        the CLI: may compose everything; only it and benchmarks import it
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = ("cache_schema", "pipeline", "teacher_dump", "student_train", "toy_world", "alignkd_harness", "alignkd",
        "benchmarks")
ALLOWED = {
    "cache_schema": {"cache_schema"},
    "pipeline": {"pipeline"},
    "teacher_dump": {"teacher_dump", "pipeline", "cache_schema"},
    "student_train": {"student_train", "pipeline", "cache_schema"},
    "toy_world": {"toy_world", "pipeline"},
    "alignkd_harness": {"alignkd_harness", "pipeline"},
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
    f.write_text("def f():\n    from teacher_dump.plan import x  # noqa\n    import student_train.recipe\n")
    assert {top for top, _ in _imports(f)} == {"teacher_dump", "student_train"}
