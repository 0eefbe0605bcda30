"""``make demo-phases`` / ``python -m ctpipe.demo_phases``: the pix2pix family end to end on 2 CPU cores.

Synthetic beating-heart CT (trainA/trainB + testA/testB NIfTI) -> ``prep nifti-pairs`` -> ``pix2pix_phase``
training (a small U-Net sized to the slices) -> final evaluation against the identity baseline -> folder
inference on testA to NIfTI, scored against testB -> ``ctpipe aggregate``. Prints where its log and outputs are.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ctpipe.data.nifti_pairs import prep_nifti_pairs
from ctpipe.data.synthetic_phases import write_synthetic_phases
from ctpipe.demo_common import DemoLog, heartbeat
from ctpipe.infer_pix2pix import describe, infer_folder
from ctpipe.report import aggregate
from ctpipe.runner import configure_logging, run_stage
from ctpipe.stages import get_stage
from ctpipe.summaries import infer_folder_summary, prep_summary

NAME = "demo_phases"


@dataclass(frozen=True)
class PhasesDemoSize:
    """How big the demo is; the defaults are what ``make demo-phases`` runs (measured in the README)."""

    # The defaults are the recipe of tests/stages/test_pix2pix_phase.py that beats identity on every volume:
    # 64 patients, a 24-channel U-Net (6 levels at 64^2), an 8-channel 2-layer PatchGAN, 16 epochs.
    n_train: int = 64        # trainA/trainB patients (split 80/20 into train/validation by the prep)
    n_test: int = 4          # testA/testB patients (the test split, and the folder-inference input)
    size: int = 64           # slice side
    n_slices: int = 16
    epochs: int = 16
    ngf: int = 24            # generator width (the U-Net depth follows from the slice size)
    ndf: int = 8             # discriminator width
    max_steps_per_epoch: int | None = None
    seed: int = 0


def training_overrides(shards: Path, size: PhasesDemoSize) -> list[str]:
    """The small CPU preset of pix2pix_phase (also documented in the README) at ``size``."""
    over = [f"data.root={shards}", "data.num_workers=0", "data.batch_size=4", "train.device=cpu",
            f"model.ngf={size.ngf}", f"model.ndf={size.ndf}", "model.n_layers_d=2", "model.norm=instance",
            "model.dropout=false", "optim.lr=2e-3", f"train.epochs={size.epochs}",
            f"scheduler.n_epochs_constant={size.epochs // 2}", "train.log_every=10", "train.checkpoint_every=0",
            f"train.seed={size.seed}"]
    if size.max_steps_per_epoch is not None:
        over.append(f"train.max_steps_per_epoch={size.max_steps_per_epoch}")
    return over


def versus_identity(means: dict[str, float]) -> str:
    """``test volumes: pix2pix PSNR .. dB vs identity .. dB; SSIM .. vs ..`` from the folder metrics' means."""
    psnr, ssim = "psnr_hu[range=4095]", "ssim2d_hu[range=4095]"
    if psnr not in means:
        return "no metrics (no target volumes)"
    beats = means[psnr] > means["identity_" + psnr] and means[ssim] > means["identity_" + ssim]
    return (f"test volumes (mean, HU, data range 4095): pix2pix PSNR {means[psnr]:.2f} dB vs identity baseline "
            f"{means['identity_' + psnr]:.2f} dB; SSIM {means[ssim]:.4f} vs {means['identity_' + ssim]:.4f}: "
            + ("the generator beats the identity baseline" if beats else
               "the generator does NOT beat the identity baseline (too short a run; see the README)"))


def run_phases_demo(workdir: Path, size: PhasesDemoSize = PhasesDemoSize()) -> dict[str, Path]:
    """Run the pix2pix demo in ``workdir`` (data/, runs/, results/ below it); returns its output files."""
    start = time.monotonic()
    raw, shards = workdir / "data" / NAME / "raw", workdir / "data" / NAME / "shards"
    run_dir = workdir / "runs" / NAME / "pix2pix_phase" / "demo"
    results = workdir / "results" / NAME
    predictions = results / "predictions"
    log = DemoLog("demo-phases", results / "demo.log")
    say = log.say
    configure_logging()
    say(f"log: {log.path}; outputs: {results}")
    say(f"1/5 synthesizing {size.n_train} + {size.n_test} test patients ({size.size}^2 x {size.n_slices} slices, "
        f"time-averaged CT -> phase 0) in {raw}")
    write_synthetic_phases(raw, size.n_train, size=size.size, n_slices=size.n_slices, seed=size.seed)
    write_synthetic_phases(raw, size.n_test, size=size.size, n_slices=size.n_slices, seed=size.seed, subset="test")
    say(f"2/5 prep nifti-pairs -> {shards}")
    prep = prep_nifti_pairs(raw, shards, size=size.size)
    for line in prep_summary("nifti-pairs", prep)[0]:
        say(f"   {line}")
    say(f"3/5 training pix2pix_phase ({size.epochs} epochs, then final evaluation vs identity) in {run_dir}")
    with heartbeat(say, f"training (run folder {run_dir})"):
        result = run_stage("pix2pix_phase", run_dir, training_overrides(shards, size))
    say(f"   training: {result.status} after {result.epoch} epochs")
    if result.status not in ("completed", "early_stopped"):
        raise RuntimeError(f"pix2pix_phase training ended {result.status}; see {run_dir}/events.jsonl")
    say(f"4/5 folder inference: {raw / 'testA'} -> {predictions} (NIfTI, HU), scored against {raw / 'testB'}")
    trained = get_stage("pix2pix_phase").load_trained(run_dir / "checkpoints" / "best.pt")
    folder = infer_folder(trained.generator, raw / "testA", predictions, trained.prep.window, trained.prep.size,
                          "cpu", 8, raw / "testB")
    for line in infer_folder_summary(folder, predictions, {})[0]:
        say(f"   {line}")
    say("   " + versus_identity(describe(folder)))
    say(f"5/5 aggregating {run_dir.parent.parent} into {results}")
    outputs = aggregate(run_dir.parent.parent, results)
    if folder.metrics_csv is not None:
        outputs["inference_metrics"] = folder.metrics_csv
    outputs["predictions"] = predictions
    say(f"done in {time.monotonic() - start:.1f} s")
    for name, path in outputs.items():
        say(f"{name}: {path}")
    say(f"demo log: {log.path}")
    return outputs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ctpipe.demo_phases", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".", help="where data/, runs/ and results/ are created")
    parser.add_argument("--n-train", type=int, default=PhasesDemoSize.n_train)
    parser.add_argument("--epochs", type=int, default=PhasesDemoSize.epochs)
    args = parser.parse_args(argv)
    run_phases_demo(Path(args.workdir), PhasesDemoSize(n_train=args.n_train, epochs=args.epochs))


if __name__ == "__main__":  # pragma: no cover
    main()
