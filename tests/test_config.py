import dataclasses
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ctpipe.config import ConfigError, DataConfig, apply_overrides, build_config, from_dict, load_json, to_dict
from ctpipe.models.residual_upsampler3d import ResidualUpsampler3DConfig
from ctpipe.models.xray2ct_progressive import XRay2CTProgressiveConfig
from ctpipe.runner import stage_config_path
from ctpipe.stages import STAGES, get_stage
from ctpipe.stages.fbp_window import FBPWindowConfig


def test_packaged_stage_configs_load_and_round_trip():
    for name, stage in STAGES.items():
        data = load_json(stage_config_path(name))
        cfg = from_dict(stage.config_cls, data)
        assert cfg.stage == name
        assert from_dict(stage.config_cls, to_dict(cfg)) == cfg


def test_overrides_are_typed_and_nested():
    cfg = build_config(FBPWindowConfig, {}, ["optim.lr=3e-4", "optim.name=adamw", "train.epochs=3",
                                             "data.root=/x/y", "train.grad_clip=null", "optim.betas=[0.5,0.9]"])
    assert cfg.optim.lr == 3e-4 and cfg.optim.name == "adamw" and cfg.train.epochs == 3
    assert cfg.data.root == "/x/y" and cfg.train.grad_clip is None and cfg.optim.betas == (0.5, 0.9)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 1.0  # type: ignore[misc]


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        build_config(FBPWindowConfig, {}, ["optim.lrr=1"])
    assert "lrr" in str(err.value) and "'lr'" in str(err.value) and "weight_decay" in str(err.value)


@pytest.mark.parametrize("override, fragment", [
    ("train.epochs=2.5", "expected an integer"),
    ("train.epochs=true", "expected an integer"),
    ("optim.lr=fast", "expected a number"),
    ("optim.name=sgd", "not one of"),
    ("train.amp=fp8", "not one of"),
    ("optim.betas=[0.9]", "expected 2 items"),
    ("data=3", "expected an object"),
])
def test_wrong_types_fail_clearly(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_config(FBPWindowConfig, {}, [override])


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["optim.lr"])


def test_bad_json_file_names_the_file(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{oops")
    with pytest.raises(ConfigError, match="x.json"):
        load_json(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_json(tmp_path / "missing.json")


def test_unknown_stage_lists_stages():
    with pytest.raises(KeyError, match="fbp_window"):
        get_stage("fbp_windw")


def test_to_dict_is_json_ready():
    json.dumps(to_dict(FBPWindowConfig()))
    assert to_dict(DataConfig())["batch_size"] == 8


def test_partial_section_keeps_the_stage_defaults():
    # FBPWindowConfig's optimizer default is lr=1e-2, not OptimConfig's generic 1e-3
    cfg = build_config(FBPWindowConfig, {"optim": {"name": "adamw"}})
    assert cfg.optim.name == "adamw" and cfg.optim.lr == 1e-2


def test_a_generic_section_builds_the_network_config_it_names():
    # direct_256's model is NetworkChoice[XRay2CTProgressiveConfig]: ``network`` must build that class
    direct, refine = get_stage("direct_256").config_cls, get_stage("refine_256").config_cls
    cfg = build_config(direct, {}, ["model.preset=custom", "model.network.output_size=128",
                                    "model.network.decoder_channels=[8,8,8,4]"])
    assert type(cfg.model.network) is XRay2CTProgressiveConfig and cfg.model.network.output_size == 128
    assert from_dict(direct, to_dict(cfg)) == cfg
    cfg = build_config(refine, {}, ["model.preset=custom", "model.network.input_size=16"])
    assert type(cfg.model.network) is ResidualUpsampler3DConfig and cfg.model.network.input_size == 16
    with pytest.raises(ConfigError, match=r"model\.network: unknown key\(s\) \['token_grid'\].*input_size"):
        build_config(refine, {}, ["model.network.token_grid=4"])


def test_a_config_class_own_check_is_a_config_error_naming_the_section():
    with pytest.raises(ConfigError, match=r"config\.model\.network: XRay2CTProgressiveConfig: .*output_size=128"):
        build_config(get_stage("direct_256").config_cls, {}, ["model.preset=custom", "model.network.output_size=128"])


def test_a_built_wheel_carries_the_stage_configs_and_never_imports_jobs(tmp_path):
    """A non-editable install finds every packaged config inside ``ctpipe`` (package data), without ``jobs``."""
    repo = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(repo / name, src / name)
    for package in ("ctpipe", "jobs", "data_prep"):
        shutil.copytree(repo / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    installed = tmp_path / "site"
    with zipfile.ZipFile(next((tmp_path / "dist").glob("ctpipe-*.whl"))) as wheel:
        wheel.extractall(installed)
    probe = ("import json, sys; from ctpipe.runner import stage_config_path; from ctpipe.stages import STAGES; "
             "print(json.dumps({'paths': [str(stage_config_path(s)) for s in STAGES], 'jobs': 'jobs' in sys.modules}))")
    empty = tmp_path / "cwd"
    empty.mkdir()
    out = subprocess.run([sys.executable, "-c", probe], cwd=empty, env={**os.environ, "PYTHONPATH": str(installed)},
                         check=True, capture_output=True, text=True, timeout=300)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["jobs"] is False
    for path in map(Path, found["paths"]):
        assert path.parent == installed / "ctpipe" / "configs" and path.is_file(), path
    packaged = sorted(p.name for p in (repo / "ctpipe" / "configs").glob("*.json"))
    assert sorted(p.name for p in (installed / "ctpipe" / "configs").glob("*.json")) == packaged
