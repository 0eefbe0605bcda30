"""One source of config defaults: each stage's dataclass holds its canonical settings, a packaged file lists only
what it changes. These tests fail when the two drift apart (a default restated, or a file that no longer builds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import pytest

from ctpipe.config import build_config, load_json, to_dict
from ctpipe.paths import stage_configs_dir
from ctpipe.runner import stage_config_path
from ctpipe.stages import STAGES, get_stage

PACKAGED = sorted(stage_configs_dir().glob("*.json"))


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a.b": leaf}`` for every leaf of a nested dict."""
    pairs = ((f"{prefix}{key}", value) for key, value in tree.items())
    return {k: v for key, value in pairs
            for k, v in (_flatten(value, f"{key}.").items() if isinstance(value, Mapping) else [(key, value)])}


def restated_defaults(raw: Mapping[str, Any]) -> list[str]:
    """The keys a config file sets to its stage dataclass's default value (``stage`` itself excepted)."""
    cls = get_stage(raw["stage"]).config_cls
    built = _flatten(_plain(to_dict(build_config(cls, raw))))
    default = _flatten(_plain(to_dict(cls())))
    return sorted(k for k in _flatten(raw) if k != "stage" and k in default and built[k] == default[k])


def test_there_is_one_packaged_config_per_stage_and_no_stray_file() -> None:
    names = {p.stem for p in PACKAGED}
    assert set(STAGES) <= names
    for path in PACKAGED:
        assert load_json(path).get("stage") in STAGES, f"{path}: 'stage' must name one of {sorted(STAGES)}"


@pytest.mark.parametrize("path", PACKAGED, ids=lambda p: p.name)
def test_a_packaged_config_builds_and_sets_only_what_differs_from_the_dataclass(path: Path) -> None:
    raw = load_json(path)
    build_config(get_stage(raw["stage"]).config_cls, raw, where=str(path))
    assert restated_defaults(raw) == [], (
        f"{path.name} restates dataclass defaults; drop these keys (or change the default in the stage module)")


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_stage_default_config_is_its_dataclass(stage: str) -> None:
    cls = get_stage(stage).config_cls
    assert build_config(cls, load_json(stage_config_path(stage))) == cls()


def test_a_restated_or_drifted_key_is_caught() -> None:
    """The check itself: a file that repeats a default, even one nested in a section, is reported."""
    assert restated_defaults({"stage": "pix2pix_phase", "loss": {"lambda_l1": 50.0}, "optim": {"lr": 3e-4}}) == [
        "loss.lambda_l1"]
    assert restated_defaults({"stage": "stage1_64", "train": {"grad_clip": 1.0, "log_every": 50}}) == [
        "train.grad_clip", "train.log_every"]
    assert restated_defaults({"stage": "fbp_window", "scheduler": {"patience": 2}}) == []


@pytest.mark.parametrize("path", PACKAGED, ids=lambda p: p.name)
def test_a_variant_names_its_experiment_and_cites_a_source_document_not_an_issue(path: Path) -> None:
    raw = load_json(path)
    if path.stem in STAGES:
        assert set(raw) == {"stage"}, f"{path.name}: the stage's own settings live in its dataclass"
        return
    assert raw.get("experiment") == path.stem
    assert "seeds/" in raw.get("source", "") and "issue" not in raw["source"].lower()
