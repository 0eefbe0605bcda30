"""``make demo-unet`` / ``python -m ctpipe.demo_unet``: experiment 4 (frozen FBP + UNet) on the demo's data.

Reuses the synthetic small LoDoPaB-format set of ``make demo`` (``data/demo/shards``; created with the same
functions when missing), trains experiment 4 in two segments -- each one ``run_stage`` call that resumes from
the checkpoint, as one SLURM job per segment would -- and aggregates into ``results/demo/fbp_unet/``, whose
``summary.csv`` lists FBP-Hann and FBP+UNet side by side.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Sequence

import pandas as pd

from ctpipe.data.lodopab import prep_lodopab
from ctpipe.data.synthetic import write_synthetic_lodopab
from ctpipe.demo import DEMO_NAME
from ctpipe.report import aggregate
from ctpipe.runner import run_stage

RUN_NAME = "small_unet"
# A small but real UNet for 128^2 images: 4 scales, about 0.1 M parameters (the LoDoPaB default has 0.6 M).
DEMO_OVERRIDES = (
    "model.channels=[16,16,32,64]",
    "model.skip_channels=4",
    "loss.ms_ssim_fallback=ssim",   # 128 px < 161 px: single-scale SSIM instead of MS-SSIM
    "data.batch_size=8",
    "data.num_workers=0",
    "train.early_stopping_patience=null",
    "train.log_every=20",
)


def _say(message: str) -> None:
    print(f"[ctpipe demo-unet] {message}", flush=True)


def ensure_demo_shards(workdir: Path, n: int = 400, seed: int = 0) -> Path:
    """The demo's shard set under ``workdir``; synthesized and prepped (as ``make demo`` does) when missing."""
    raw = workdir / "data" / DEMO_NAME / "raw"
    shards = workdir / "data" / DEMO_NAME / "shards"
    if (shards / "manifest.json").exists():
        _say(f"reusing the demo shard set {shards}")
        return shards
    _say(f"synthesizing {n} LoDoPaB-format slices (small geometry) in {raw}")
    write_synthetic_lodopab(raw, n=n, size="small", seed=seed)
    _say(f"converting raw files to shards in {shards}")
    prep_lodopab(raw, shards)
    return shards


def run_demo_unet(workdir: Path, epochs: int = 6, segments: int = 2, n: int = 400) -> dict[str, Path]:
    """Train experiment 4 on the demo data in ``segments`` resumed calls, then aggregate; returns the outputs."""
    start = time.monotonic()
    shards = ensure_demo_shards(workdir, n=n)
    runs = workdir / "runs" / DEMO_NAME / "fbp_unet"
    results = workdir / "results" / DEMO_NAME / "fbp_unet"
    segment_epochs = max(1, -(-epochs // segments))
    overrides = [f"data.root={shards}", f"train.epochs={epochs}", f"train.segment_epochs={segment_epochs}",
                 *DEMO_OVERRIDES]
    status = ""
    for segment in range(1, segments + 2):
        _say(f"training segment {segment} (epochs of {segment_epochs}) in {runs / RUN_NAME}")
        status = run_stage("fbp_unet", runs / RUN_NAME, overrides).status
        _say(f"   segment {segment}: {status}")
        if status != "segment_done":
            break
    if status not in ("completed", "early_stopped"):
        raise RuntimeError(f"experiment 4 ended with status {status!r}; see {runs / RUN_NAME / 'events.jsonl'}")
    outputs = aggregate(runs, results)
    summary = pd.read_csv(outputs["summary"])
    columns = ["model", "split", "n_samples", "psnr[range=1]", "psnr[range=per_image]", "ssim[range=1]"]
    _say("summary (mean over samples):\n" + summary[columns].to_string(index=False))
    _say(f"done in {time.monotonic() - start:.1f} s")
    for name, path in outputs.items():
        _say(f"{name}: {path}")
    return outputs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ctpipe.demo_unet", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".", help="where data/, runs/ and results/ are")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--segments", type=int, default=2)
    parser.add_argument("--n", type=int, default=400, help="synthetic slices, when the demo set must be created")
    args = parser.parse_args(argv)
    run_demo_unet(Path(args.workdir), epochs=args.epochs, segments=args.segments, n=args.n)


if __name__ == "__main__":  # pragma: no cover
    main()
