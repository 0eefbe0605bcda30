"""``--preset cpu-tiny``: valid for every stage's packaged config, matches the tiny data it documents, and a rank
logs where it runs."""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ctpipe.cli import main
from ctpipe.config import build_config, load_json
from ctpipe.distributed import DistEnv, pick_device
from ctpipe.presets import CPU_TINY_DATA, PRESETS, preset_overrides
from ctpipe.runner import stage_config_path, startup_line
from ctpipe.stages import STAGES, get_stage


def test_cpu_tiny_covers_every_stage_and_builds_its_config() -> None:
    assert set(PRESETS["cpu-tiny"]) == set(STAGES)
    for stage in STAGES:
        cfg = build_config(get_stage(stage).config_cls, load_json(stage_config_path(stage)),
                           preset_overrides("cpu-tiny", stage), where=stage)
        assert cfg.train.device == "cpu" and cfg.train.amp == "none", stage


def test_unknown_preset_or_stage_names_the_choices() -> None:
    with pytest.raises(ValueError, match="available: cpu-tiny"):
        preset_overrides("gpu-huge", "stage1_64")
    with pytest.raises(ValueError, match="no settings for stage 'nope'"):
        preset_overrides("cpu-tiny", "nope")
    assert preset_overrides(None, "anything") == []


def test_cpu_tiny_stage1_runs_on_the_documented_tiny_data(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The prep commands of CPU_TINY_DATA['xray2ct'] + `ctpipe train stage1_64 --preset cpu-tiny`: a finished run
    whose saved config holds the preset, and a start-up line naming host, rank, device and AMP."""
    ct, shards = tmp_path / "ct", tmp_path / "shards"
    synth, drr = CPU_TINY_DATA["xray2ct"]
    main([*shlex.split(synth), "--out", str(ct)])
    main([*shlex.split(drr), "--src", str(ct), "--out", str(shards)])
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="ctpipe.runner"):
        main(["train", "stage1_64", "--preset", "cpu-tiny", f"data.root={shards}", "train.max_steps_per_epoch=2",
              "train.epochs=1", "--run-dir", str(run)])
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["preset"] == "tiny" and saved["data"]["volume_field"] == "volume_16"
    assert saved["train"]["epochs"] == 1  # the user's override wins over the preset's
    assert (run / "eval").is_dir()
    starts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("start stage1_64:")]
    assert len(starts) == 1 and "rank=0/1" in starts[0] and "device=cpu (CPU)" in starts[0] and "amp=none" in starts[0]
    # the 256^3 stages' presets fit the same tiny data (16^3 -> 32^3)
    best = run / "checkpoints" / "best.pt"
    for stage, extra in (("refine_256", f"stage1_checkpoint={best}"), ("direct_256", f"init_from_stage1={best}")):
        main(["train", stage, "--preset", "cpu-tiny", f"data.root={shards}", extra, "train.max_steps_per_epoch=1",
              "train.epochs=1", "--run-dir", str(tmp_path / stage)])
        assert (tmp_path / stage / "eval").is_dir()


def test_startup_line_names_host_rank_device_amp() -> None:
    line = startup_line("fbp_unet", DistEnv(rank=1, world_size=2, local_rank=1), torch.device("cpu"), "bf16")
    assert "rank=1/2" in line and "local_rank=1" in line and "(CPU)" in line and "amp=bf16" in line and "host=" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure on a machine without a GPU")
def test_cuda_request_fails_at_start_up_without_a_gpu(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="train.device=cuda was requested but no CUDA device"):
        pick_device("cuda", DistEnv())
    proc = subprocess.run([sys.executable, "-m", "ctpipe.cli", "train", "fbp_window", "train.device=cuda",
                           f"data.root={tmp_path / 'none'}", "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "no CUDA device is visible" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
