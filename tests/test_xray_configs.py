"""The X-ray -> CT configs carry the source experiments' settings and cite the document they follow."""

from pathlib import Path

import pytest

from ctpipe.config import build_config, load_json
from ctpipe.paths import stage_configs_dir
from ctpipe.stages import get_stage

SEEDS = Path("/work/shared/seeds")
# config -> (document it must cite, settings the document gives)
EXPECTED = {
    "stage1_64": ("003_64ed3ea31725ee4f", {"loss.l1": 1.0, "loss.ssim3d": 0.5, "optim.name": "adamw",
                                          "scheduler.name": "cosine", "train.epochs": 100, "data.batch_size": 8}),
    "stage1_64_enhanced": ("002_54da4c0bd0afc75e", {"loss.l1": 1.0, "loss.ssim3d": 0.5, "loss.perceptual": 0.1,
                                                    "loss.edge": 0.1, "loss.scale_weights": (0.3, 0.3, 1.0),
                                                    "train.epochs": 50, "data.batch_size": 4, "optim.lr": 1e-4}),
    "stage1_64_enhanced_003": ("003_64ed3ea31725ee4f", {"loss.perceptual": 0.2, "loss.edge": 0.1,
                                                        "loss.scale_weights": (0.3, 0.3, 1.0), "train.epochs": 100}),
    "refine_256_seeds": ("002_54da4c0bd0afc75e", {"loss.l1": 1.0, "loss.perceptual": 0.1, "loss.edge": 0.1,
                                                  "data.batch_size": 2, "optim.lr": 5e-5}),
    "refine_256_v2": ("003_64ed3ea31725ee4f", {"loss.ssim3d": 0.5, "loss.edge": 0.05, "loss.perceptual": 0.0,
                                               "loss.scale_weights": (0.2, 0.2, 1.0), "optim.lr": 5e-5}),
    "direct_256_v2": ("003_64ed3ea31725ee4f", {"optim.lr": 5e-5, "scheduler.name": "cosine", "loss.l1": 1.0,
                                               "loss.ssim3d": 0.0, "loss.edge": 0.0, "data.batch_size": 2,
                                               "train.grad_accum": 2, "train.gradient_checkpointing": True}),
    # the lift network is trained like the base model (cosine, 100 epochs), with L1 only as its source says
    "stage1_64_lift": ("003_64ed3ea31725ee4f", {"model.architecture": "lift", "loss.l1": 1.0, "loss.ssim3d": 0.0,
                                                "loss.edge": 0.0, "loss.perceptual": 0.0, "loss.mse": 0.0,
                                                "scheduler.name": "cosine", "train.epochs": 100}),
}


def lookup(cfg, dotted):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_source_settings_configs(name):
    raw = load_json(stage_configs_dir() / f"{name}.json")
    cfg = build_config(get_stage(raw["stage"]).config_cls, raw)
    document, settings = EXPECTED[name]
    assert cfg.experiment == name and f"seeds/{document}.txt" in cfg.source
    if SEEDS.is_dir():
        assert (SEEDS / f"{document}.txt").is_file()
    for key, value in settings.items():
        assert lookup(cfg, key) == value, key
