"""Imports inside functions stay only for heavy or optional dependencies (never to break an import cycle:
a cycle is fixed by moving code), and each one says why in a ``# lazy:`` comment on its line or the line
above."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import ctpipe

PACKAGE = Path(ctpipe.__file__).parent
MARK = "# lazy:"


def unexplained_imports(source: str) -> list[int]:
    """Line numbers of the imports inside a function that carry no ``# lazy:`` reason (same line or above)."""
    lines = source.splitlines()
    found: list[int] = []
    for func in ast.walk(ast.parse(source)):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                nearby = lines[max(node.lineno - 2, 0):node.end_lineno]
                if not any(MARK in line for line in nearby):
                    found.append(node.lineno)
    return sorted(set(found))


def test_the_check_finds_an_unexplained_import() -> None:
    source = ("def f():\n    import json\n    return json\n\n"
              "def g():\n    import torch  # lazy: heavy\n\n"
              "def h():\n    # lazy: an import cycle\n    from a import b\n\n"
              "class C:\n    def m(self):\n        from a import c\n")
    assert unexplained_imports(source) == [2, 14]


def test_every_import_inside_a_function_says_why() -> None:
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line}" for path in sorted(PACKAGE.rglob("*.py"))
                 for line in unexplained_imports(path.read_text())]
    assert not offenders, ("imports inside functions without a '# lazy: <reason>' comment (move them to the top "
                           f"of the module, or give the reason on their line or the line above): {offenders}")


def test_no_import_is_deferred_to_break_a_cycle() -> None:
    reasons = [f"{path.relative_to(PACKAGE.parent)}:{number}" for path in sorted(PACKAGE.rglob("*.py"))
               for number, line in enumerate(path.read_text().splitlines(), 1)
               if MARK in line and "cycle" in line.split(MARK, 1)[1]]
    assert not reasons, f"lazy imports that work around an import cycle (move the shared code instead): {reasons}"


def test_the_cli_starts_without_the_heavy_optional_modules() -> None:
    """The reasons the CLI's lazy imports give: its start does not load these."""
    heavy = ("pandas", "h5py", "nibabel", "matplotlib", "scipy", "tensorboard", "ctpipe.stages", "ctpipe.pipeline")
    code = f"import sys, ctpipe.cli; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
