"""The training stages, by name. Stage names are used everywhere: configs, sbatch scripts, run folders, CSVs.

Each stage module provides one :class:`Stage` (see :mod:`ctpipe.stages.base`): its config dataclass, the
trainer's task, its trained model, how to load that model for inference and the models its final evaluation
scores. The mapping is an explicit dict (no registry magic).
"""

from __future__ import annotations

from ctpipe.stages.base import Stage
from ctpipe.stages.direct_256 import DIRECT_256
from ctpipe.stages.fbp_unet import FBP_UNET
from ctpipe.stages.fbp_window import FBP_WINDOW
from ctpipe.stages.pix2pix_phase import PIX2PIX_PHASE
from ctpipe.stages.refine_256 import REFINE_256
from ctpipe.stages.stage1_64 import STAGE1_64

STAGE_NAMES = ("fbp_window", "fbp_unet", "stage1_64", "refine_256", "direct_256", "pix2pix_phase")

STAGES: dict[str, Stage] = {
    "fbp_window": FBP_WINDOW,
    "pix2pix_phase": PIX2PIX_PHASE,
    "fbp_unet": FBP_UNET,
    "stage1_64": STAGE1_64,
    "refine_256": REFINE_256,
    "direct_256": DIRECT_256,
}


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        planned = [n for n in STAGE_NAMES if n not in STAGES]
        raise KeyError(f"unknown stage {name!r}; available stages: {sorted(STAGES)}"
                       + (f" (not yet implemented: {planned})" if planned else ""))
    return STAGES[name]
