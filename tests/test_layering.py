"""Who imports whom: report reads run folders only, stages do not import inference, inference uses only
the stage objects (``ctpipe.stages``), not a stage module's internals, and the library never imports its
command line (``ctpipe.cli`` is an entry point)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import ctpipe

PACKAGE = Path(ctpipe.__file__).parent


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_report_does_not_import_the_stages() -> None:
    assert not {m for m in _imports(PACKAGE / "report.py") if m.startswith("ctpipe.stages")}
    code = "import sys, ctpipe.report; print(any(m.startswith('ctpipe.stages') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"


def test_stages_do_not_import_inference() -> None:
    for path in sorted((PACKAGE / "stages").glob("*.py")):
        assert not {m for m in _imports(path) if m.startswith("ctpipe.infer")}, path.name


def test_inference_uses_only_the_stage_objects() -> None:
    for path in sorted(PACKAGE.glob("infer_*.py")):
        assert not {m for m in _imports(path) if m.startswith("ctpipe.stages.")}, path.name


def test_the_library_does_not_import_its_command_line() -> None:
    entry_points = {"cli.py", "__main__.py"}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name not in entry_points:
            assert "ctpipe.cli" not in _imports(path), path.relative_to(PACKAGE)
