"""``ctpipe prep KIND --src S --out O`` and the pipeline's prep jobs (which call the prep functions with their
defaults) must prepare the same shard set: the command line's defaults are the functions' defaults."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import pytest

from ctpipe.cli import build_parser
from ctpipe.data.drr_prep import parse_split_fractions, prep_drr
from ctpipe.data.lodopab import prep_lodopab
from ctpipe.data.nifti_pairs import prep_nifti_pairs


def _defaults(function: Callable[..., Any]) -> dict[str, Any]:
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _cli(kind: str) -> Any:
    return build_parser().parse_args(["prep", kind, "--src", "S", "--out", "O"])


def test_prep_drr_command_defaults_are_the_function_defaults() -> None:
    args, defaults = _cli("drr"), _defaults(prep_drr)
    assert args.xray_size == defaults["xray_size"]
    assert tuple(int(s) for s in args.volume_sizes.split(",")) == tuple(defaults["volume_sizes"])
    assert parse_split_fractions(args.split_fractions) == tuple(defaults["split_fractions"])
    assert (args.cone_beam, args.files_per_shard, args.device) == \
        (defaults["cone_beam"], defaults["files_per_shard"], defaults["device"])


def test_prep_nifti_pairs_command_defaults_are_the_function_defaults() -> None:
    args, defaults = _cli("nifti-pairs"), _defaults(prep_nifti_pairs)
    assert int(args.size) == defaults["size"]
    assert tuple(args.hu_window) == tuple(defaults["hu_window"])
    assert tuple(float(f) for f in args.split_fractions.split(",")) == tuple(defaults["split_fractions"])
    assert args.affine_atol == defaults["affine_atol"]


def test_prep_lodopab_command_defaults_are_the_function_defaults() -> None:
    assert tuple(_cli("lodopab").parts.split(",")) == tuple(_defaults(prep_lodopab)["parts"])


@pytest.mark.parametrize("kind", ["drr", "nifti-pairs", "lodopab"])
def test_every_optional_flag_is_checked(kind: str) -> None:
    # a new flag must be added to the checks above (or here, when it has no function default)
    not_prep_settings = {"src", "out", "task_index", "n_tasks", "json", "func", "command", "kind"}
    checked = {"drr": {"xray_size", "volume_sizes", "split_fractions", "cone_beam", "files_per_shard", "device"},
               "nifti-pairs": {"size", "hu_window", "split_fractions", "affine_atol"}, "lodopab": {"parts"}}[kind]
    assert set(vars(_cli(kind))) - not_prep_settings == checked
