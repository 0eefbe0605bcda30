"""Names that explain themselves: no issue numbers in code or script headers, and no network module that reads
like a stage module."""

from __future__ import annotations

import re
from pathlib import Path

from ctpipe.stages import STAGES

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("ctpipe", "sbatch", "jobs", "data_prep", "benchmarks", "Makefile")
ISSUE = re.compile(r"\bissues?\s*#?\s*\d+", re.IGNORECASE)


def _files() -> list[Path]:
    out: list[Path] = []
    for name in SCANNED:
        path = REPO / name
        out += [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return out


def test_no_issue_numbers_in_code_comments_or_script_headers() -> None:
    found = [f"{p.relative_to(REPO)}:{i}: {line.strip()}" for p in _files()
             for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if ISSUE.search(line)]
    assert found == [], "say what the code does, not which issue asked for it:\n" + "\n".join(found)


def test_no_network_module_is_named_like_a_stage_module() -> None:
    squash = {p.stem.replace("_", ""): p.name for p in (REPO / "ctpipe" / "models").glob("*.py")}
    clashes = {stage: squash[stage.replace("_", "")] for stage in STAGES if stage.replace("_", "") in squash}
    assert clashes == {}, f"models/ files read like stage modules: {clashes}; name them after their network"


def _glossary_rows() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Glossary\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_the_readme_glossary_names_only_things_that_exist() -> None:
    rows = _glossary_rows()
    assert sorted(re.findall(r"`(\w+)`", row[0])[0] for row in rows) == sorted(STAGES)
    stage_sources = "\n".join(p.read_text() for p in (REPO / "ctpipe" / "stages").glob("*.py"))
    for stage, source, network, evaluated, script, configs in rows:
        networks = re.findall(r"`(\w+)`[^`]*?\(`([\w/.]+\.py)`", network)
        assert networks, (stage, network)
        for name, file in networks:
            path = REPO / file if "/" in file else REPO / "ctpipe" / "models" / file
            assert re.search(rf"^class {name}\b", path.read_text(), re.MULTILINE), (stage, name, file)
        for row_name in re.findall(r"`(\w+)`", evaluated):
            assert f'"{row_name}"' in stage_sources, (stage, row_name)
        for file in re.findall(r"`(sbatch/[\w.]+)`", script):
            assert (REPO / file).is_file(), (stage, file)
        for file in re.findall(r"`([\w.]+\.json)`", configs):
            assert (REPO / "ctpipe" / "configs" / file).is_file(), (stage, file)
        assert re.findall(r"`(\d{3}_\w+|\d{3}_\.\.\.)`", source), (stage, source)
