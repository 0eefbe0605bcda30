"""Named override sets per stage: ``ctpipe train STAGE --preset cpu-tiny`` (and ``PRESET=cpu-tiny`` for sbatch/).

A preset is a list of ``key=value`` overrides applied *before* the user's own overrides (so those win). It is
meant for the first start of a run: the resolved values are saved in the run's ``config.json``, from which a
resumed run continues.

``cpu-tiny`` is a CPU-only, minutes-long run of every stage, sized for the test cluster (``tests/slurm``) or a
laptop. Its data fields match the tiny shard sets made by :data:`CPU_TINY_DATA` (the ``ctpipe prep`` arguments
listed there); with the packaged full-size shard sets use no preset.
"""

from __future__ import annotations

_CPU = ("train.device=cpu", "train.amp=none", "data.num_workers=0", "train.log_every=1000", "train.compile=false")
_XRAY = (*_CPU, "model.preset=tiny", "data.volume_field=volume_16", "data.high_field=volume_32",
         "data.batch_size=2", "data.eval_batch_size=2", "train.gradient_checkpointing=false", "train.epochs=2")
_LODOPAB = (*_CPU, "data.batch_size=4", "data.eval_batch_size=8", "train.epochs=2")

PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    "cpu-tiny": {
        "stage1_64": _XRAY,
        "refine_256": (*_XRAY, "loss.scale_weights=[0.5,1.0]"),
        "direct_256": _XRAY,
        "fbp_window": _LODOPAB,
        "fbp_unet": (*_LODOPAB, "train.segment_epochs=1", "train.early_stopping_patience=null", "model.size=tiny",
                     "loss.ms_ssim_fallback=ssim"),
        "pix2pix_phase": (*_CPU, "model.num_downs=6", "model.ngf=8", "model.ndf=8", "model.n_layers_d=2",
                          "data.eval_batch_size=16", "train.checkpoint_every=0", "train.epochs=2",
                          "scheduler.n_epochs_constant=1"),
    },
}

# The `ctpipe prep` arguments that make shard sets matching ``cpu-tiny`` (per family).
CPU_TINY_DATA: dict[str, tuple[str, ...]] = {
    "xray2ct": ("prep synth-ct --n 10 --size 32 --spacing-mm 10", "prep drr --xray-size 32 --volume-sizes 16,32"),
    "phases": ("prep synth-phases --n 6 --size 64 --n-slices 16",
               "prep nifti-pairs --size 64 --split-fractions 0.6,0.2,0.2"),
    "lodopab": ("prep synth-lodopab (geometry scaled to 32 px, 24 angles: ctpipe submit pipeline lodopab "
                "--synth-pixels 32 --synth-angles 24)",),
}


def preset_overrides(preset: str | None, stage: str) -> list[str]:
    """The overrides of ``preset`` for ``stage`` ([] for no preset); a clear error for an unknown name or stage."""
    if not preset:
        return []
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r}: unknown preset (available: {', '.join(sorted(PRESETS))})")
    stages = PRESETS[preset]
    if stage not in stages:
        raise ValueError(f"--preset {preset}: no settings for stage {stage!r} (it has: {', '.join(sorted(stages))})")
    return list(stages[stage])


def describe() -> str:
    """Every preset with its overrides per stage, and the prep commands that make matching data."""
    lines = []
    for name, stages in PRESETS.items():
        lines.append(f"{name}:")
        lines += [f"  {stage}: {' '.join(over)}" for stage, over in stages.items()]
    lines.append("cpu-tiny data (ctpipe ...):")
    lines += [f"  {family}: {'; '.join(cmds)}" for family, cmds in CPU_TINY_DATA.items()]
    return "\n".join(lines)
