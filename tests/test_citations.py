"""Every file or module a code comment or docstring cites is in the repository.

Checked in each tracked .py file's comments and docstrings:
  * paths with a directory (`docs/DESIGN.md`, `tests/pipeline/test_templates.py`), relative to the
    repository root or to the citing file; a path whose first directory is not one of the repository's
    is an output layout, a placeholder or another project's file and must be listed in OUTSIDE with why;
  * bare upper-case document names (`CONTRACTS.md`): some file of that name is tracked
    (lower-case bare names, `summary.md`, are what the commands write);
  * dotted names of our modules (`toy_world.presets`, `evaluation.heldout.evaluate`): the module
    exists, and a name after it is defined or imported at its top level.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = ("alignkd", "alignkd_harness", "benchmarks", "cache_schema", "evaluation", "pipeline", "student_train",
        "teacher_dump", "tests", "toy_world")

# first directories of cited paths that are not this repository's, each with why code cites them
OUTSIDE = {
    "mobilevlm": "the original MobileVLM code (github.com/Meituan-AutoML/MobileVLM) that original_compat matches",
    "scripts": "the same repository's scripts/inference.py, the reference benchmarks/original_runner.py follows",
    "runs": "what `make demo` and the benchmarks write (ignored by git)",
    "data": "the toy world's files under its root (toy_world/world.py)",
    "eval": "a reproduce run's evaluation output (alignkd/reproduce_cmd.py)",
    "index": "a cache store's layout (cache_schema)",
    "OUT": "placeholder: the directory `python -m alignkd_harness.lmms_task --out` writes",
    "path": "placeholder: a checkpoint directory",
    "root": "placeholder: a test's temporary directory",
    "checkpoint": "placeholder: a checkpoint directory",
    "vision_tower": "placeholder: a checkpoint's vision-tower directory",
}

PATH = re.compile(r"(?<![\w./<>-])((?:[\w.-]+/)+[\w.-]+\.(?:py|md|yaml|yml|json|toml|txt|cfg|sh))\b")
DOC = re.compile(r"(?<![\w./-])([A-Z][A-Z_]+\.md)\b")
DOTTED = re.compile(r"(?<![\w./-])((?:%s)(?:\.\w+)+)" % "|".join(OURS))


def _texts(path: Path):
    """(line, text) of every comment and docstring in the file."""
    src = path.read_text()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string
    for node in ast.walk(ast.parse(src, filename=str(path))):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None:
                yield node.body[0].lineno, doc


def _top_names(module: Path) -> set[str]:
    """Names a module defines or imports at its top level (what `module.name` may cite)."""
    out = set()
    for node in ast.parse(module.read_text(), filename=str(module)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return out


def _module_cite_ok(root: Path, dotted: str) -> bool:
    """`a.b.c`: follow packages and modules under root; the first part that is neither must be a
    top-level name of the last module reached (one attribute deep: `mod.func`, not `mod.Class.method`)."""
    parts, here, module = dotted.split("."), root, None
    for i, part in enumerate(parts):
        if (here / part).is_dir():
            here = here / part
            module = here / "__init__.py" if (here / "__init__.py").is_file() else None
        elif (here / f"{part}.py").is_file():
            module = here / f"{part}.py"
            return i + 1 == len(parts) or parts[i + 1] in _top_names(module)
        else:
            return module is not None and part in _top_names(module)
    return True


def stale_citations(root: Path, files: list[Path], used_outside: set[str] | None = None) -> list[str]:
    tracked_docs = {p.name for p in root.rglob("*.md") if not any(x.startswith(".") for x in p.relative_to(root).parts)}
    top = {p.name for p in root.iterdir()}
    bad = []
    for f in files:
        for line, text in _texts(root / f):
            where = f"{f}:{line}"
            for cited in PATH.findall(text):
                first = cited.split("/")[0]
                if first in OUTSIDE:  # first: runs/ exists in a checkout after `make demo`, and is still output
                    if used_outside is not None:
                        used_outside.add(first)
                elif first in top:
                    if not ((root / cited).exists() or (root / f).parent.joinpath(cited).exists()):
                        bad.append(f"{where} cites {cited}, which is not in the repository")
                elif not (root / f).parent.joinpath(cited).exists():
                    bad.append(f"{where} cites {cited}: not a path of the repository, nor listed in OUTSIDE")
            bad += [f"{where} cites {d}: no such document in the repository"
                    for d in DOC.findall(text) if d not in tracked_docs]
            bad += [f"{where} cites {m}: no such module or name" for m in DOTTED.findall(text)
                    if not _module_cite_ok(root, m.rstrip("."))]
    return bad


def _tracked_py() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [Path(p) for p in out.split()]


def test_no_comment_cites_a_missing_file_or_module():
    files = _tracked_py()
    assert len(files) > 100, "git ls-files found too few files: not run from a checkout?"
    used = set()
    bad = stale_citations(REPO, files, used)
    assert not bad, "stale citations in comments/docstrings:\n" + "\n".join(bad)
    assert set(OUTSIDE) <= used, f"OUTSIDE entries no comment cites any more (remove them): {sorted(set(OUTSIDE) - used)}"


@pytest.mark.parametrize("comment, ok", [
    ("# see docs/CONTRACTS.md", True),
    ("# see docs/NOWHERE.md", False),
    ("# see DESIGN_NOTES.md §3", False),
    ("# the store's index/finalized.json", True),              # OUTSIDE: a store's layout
    ("# written to results/x.json", False),                    # neither ours nor listed
    ("# pipeline.templates.encode_prompt", True),
    ("# pipeline.evaluation.evaluate", False),                 # moved to evaluation.heldout
    ("# pipeline.templates.no_such_function", False),
    ("# tests/pipeline/test_toy_tower.py", False),             # lives under tests/toy_world/
])
def test_the_check_catches_a_stale_citation(tmp_path, comment, ok):
    f = Path("pkg_mod.py")
    (tmp_path / f).write_text(f"{comment}\nX = 1\n")
    for rel in ("docs/CONTRACTS.md", "pipeline/__init__.py", "tests/toy_world/test_toy_tower.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    (tmp_path / "pipeline/templates.py").write_text("def encode_prompt():\n    pass\n")
    assert (stale_citations(tmp_path, [f]) == []) is ok, stale_citations(tmp_path, [f])
