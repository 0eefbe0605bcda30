"""The data families a pipeline can run (their stages and training chains) and the synthetic raw data spec.

Kept apart from :mod:`ctpipe.pipeline` so the command line can list the families (``ctpipe submit pipeline
--help``) without importing the pipeline's jobs and their data and report modules."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """One training job of a family's chain: ``stage`` trained in ``runs/<name>/<key>``.

    ``uses``: (override key, step key) pairs; the override is set to that step's ``checkpoints/best.pt`` and
    the job starts only after that step succeeded (``afterok``); ``extra``: fixed overrides of this step."""

    key: str
    stage: str
    uses: tuple[tuple[str, str], ...] = ()
    extra: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Family:
    """A data family: its stages, the ones a pipeline trains by default, and the chain's training steps."""

    name: str
    stages: tuple[str, ...]
    default_stages: tuple[str, ...]
    steps: tuple[TrainStep, ...] = ()


FAMILIES: dict[str, Family] = {
    # the source experiments' order: learned window (exp. 1) -> UNet on the frozen learned window, beside the
    # UNet on the Hann-0.641 FBP (exp. 4)
    "lodopab": Family("lodopab", stages=("fbp_window", "fbp_unet"), default_stages=("fbp_window",), steps=(
        TrainStep("fbp_window", "fbp_window"),
        # one job trains the whole run (the packaged segments are for RESUBMIT=1 sbatch chains)
        TrainStep("fbp_unet/learned_window", "fbp_unet", uses=(("model.window_checkpoint", "fbp_window"),),
                  extra=("train.segment_epochs=null",)),
        TrainStep("fbp_unet/hann", "fbp_unet", extra=("train.segment_epochs=null",)),
    )),
    "xray2ct": Family("xray2ct", stages=("stage1_64", "refine_256", "direct_256"),
                      default_stages=("stage1_64", "refine_256", "direct_256"), steps=(
        TrainStep("stage1_64", "stage1_64"),
        TrainStep("refine_256", "refine_256", uses=(("stage1_checkpoint", "stage1_64"),)),
        TrainStep("direct_256", "direct_256", uses=(("init_from_stage1", "stage1_64"),)),
    )),
    "phases": Family("phases", stages=("pix2pix_phase",), default_stages=("pix2pix_phase",),
                     steps=(TrainStep("pix2pix_phase", "pix2pix_phase"),)),
}


@dataclasses.dataclass(frozen=True)
class SynthSpec:
    """Small synthetic raw data in the family's layout, for running the pipeline without the real data.

    lodopab: ``n`` slices (80/10/10), geometry ``lodopab().scaled(n_pixels, n_angles)``, ``samples_per_file``
    per raw file pair; xray2ct: ``n`` CT volumes of ``n_pixels``^3 (NIfTI, HU); phases: ``n`` training patients
    plus 2 test patients (trainA/B, testA/B), ``n_pixels``^2 x 16 slices."""

    n: int = 64
    n_pixels: int = 64
    n_angles: int = 60
    samples_per_file: int = 16
    seed: int = 0
