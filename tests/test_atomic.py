import os

import pytest

from ctpipe.atomic import atomic_path, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(os.listdir(target.parent)) == ["a.txt"]


def test_failure_keeps_old_content_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text().strip().startswith("{") and '"v": 1' in target.read_text()
    assert sorted(os.listdir(tmp_path)) == ["a.json"]


def test_nan_is_refused_in_json(tmp_path):
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "x.json", {"v": float("nan")})
    assert not any(tmp_path.iterdir())
