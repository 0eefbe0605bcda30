"""pix2pix_phase training throughput: samples/s of the real G+D step at the seeds' settings.

Run: ``python -m benchmarks.pix2pix`` (``--side``, ``--batch``, ``--steps``, ``--amp``, ``--device``,
``--generator``, ``--threads``, ``--out``). In one run:

* writes 3 synthetic phase pairs at ``side`` x ``side`` (4 slices each) and preps them into a shard set in a
  temporary folder, so the task is built exactly as ``ctpipe train pix2pix_phase`` builds it;
* builds :class:`ctpipe.stages.pix2pix_phase.Pix2PixPhaseTask` from the packaged config (the seeds' settings:
  unet_512, instance norm, batch 4, Adam 1e-4 / beta1 0.5, lambda_L1 50) and the trainer's ``TrainStepper``
  (AMP autocast: ``--amp bf16`` is the default on CUDA, none on CPU);
* times ``task.train_step`` (G forward, D step, G step against the updated D) on one resident batch, after
  one warm-up step, with the device synchronised around every step (median of ``--steps``).

Reported: ms per sample, samples/s, and the hours one epoch of the seeds' 9,062 slices takes at that rate.
The seeds reported about 4 samples/s (36 minutes per epoch) on their GPU; that number is printed as a
reference only -- it was not measured in this run. Data loading is not included (see
``benchmarks.dataloader`` for the shard reader's rate).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks._common import DEFAULT_OUT, load_average, machine, print_table, today, write_rows

BENCHMARK = "pix2pix_train_step"
SEEDS_SAMPLES_PER_S = 4.0  # reported by the seeds (unet_512, batch 4, AMP, their GPU); a reference, not measured
SEEDS_EPOCH_SLICES = 9062


@dataclass(frozen=True)
class Pix2PixBenchConfig:
    side: int = 512
    batch: int = 4
    steps: int = 5
    amp: str | None = None  # None = bf16 on CUDA, off on CPU
    device: str = "auto"
    generator: str = "unet_512"
    out: Path = DEFAULT_OUT


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def write_shard_set(root: Path, side: int) -> Path:
    """A tiny nifti_pairs shard set at ``side`` x ``side`` (all patients in ``train``)."""
    from ctpipe.data.nifti_pairs import prep_nifti_pairs
    from ctpipe.data.synthetic_phases import write_synthetic_phases

    write_synthetic_phases(root / "src", 3, size=side, n_slices=4, oversample=1)
    prep_nifti_pairs(root / "src", root / "shards", size=side, split_fractions=(1.0, 0.0))
    return root / "shards"


def build_task(shards: Path, config: Pix2PixBenchConfig, device: torch.device, amp: str):
    """``(task, stepper)`` as the trainer builds them, from the packaged config with the bench's overrides."""
    from ctpipe.config import build_config, load_json
    from ctpipe.distributed import detect_env
    from ctpipe.runner import stage_config_path
    from ctpipe.schedules import EpochScheduler
    from ctpipe.stages.pix2pix_phase import Pix2PixPhaseConfig, Pix2PixPhaseTask
    from ctpipe.train import TrainStepper

    cfg = build_config(Pix2PixPhaseConfig, load_json(stage_config_path("pix2pix_phase")),
                       [f"data.root={shards}", f"data.batch_size={config.batch}", f"model.generator={config.generator}",
                        f"train.amp={amp}", f"train.device={device.type}"])
    task = Pix2PixPhaseTask(cfg, detect_env(), device)
    for module in task.modules.values():
        module.to(device).train()
    schedulers = {name: EpochScheduler(opt, cfg.scheduler, cfg.train.epochs, 1) for name, opt in task.optimizers.items()}
    return task, TrainStepper(cfg.train, device, task.optimizers, schedulers, task.modules)


def resident_batch(task, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    from ctpipe.train import collate

    samples = [task.train_set[i % len(task.train_set)] for i in range(batch)]
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in collate(samples).items()}


def time_steps(task, stepper, batch: dict, steps: int, device: torch.device) -> float:
    """Median seconds of one ``train_step`` (after one warm-up step)."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    task.train_step(batch, stepper)
    times = []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        task.train_step(batch, stepper)
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(config: Pix2PixBenchConfig) -> dict:
    device = _device(config.device)
    amp = config.amp or ("bf16" if device.type == "cuda" else "none")
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="ctpipe_bench_pix2pix_") as tmp:
        task, stepper = build_task(write_shard_set(Path(tmp), config.side), config, device, amp)
        batch = resident_batch(task, config.batch, device)
        seconds = time_steps(task, stepper, batch, config.steps, device)
    samples_per_s = config.batch / seconds
    return {"benchmark": BENCHMARK, "implementation": f"{config.generator} instance amp={amp}",
            "device": device.type, "batch": config.batch, "ms_per_image": 1000.0 * seconds / config.batch,
            "samples_per_s": samples_per_s, "threads": torch.get_num_threads(), "machine": machine(),
            "load_before": load_before, "load_after": load_average(), "date": today()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--side", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="timed steps (median), after one warm-up step")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default=None, help="default: bf16 on CUDA, none on CPU")
    p.add_argument("--device", default="auto")
    p.add_argument("--generator", choices=("unet_256", "unet_512"), default="unet_512")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = Pix2PixBenchConfig(args.side, args.batch, args.steps, args.amp, args.device, args.generator, args.out)
    row = run(config)
    write_rows([row], config.out, [BENCHMARK])
    print_table([row], ["implementation", "device", "batch", "ms_per_image", "samples_per_s", "threads"])
    epoch_h = SEEDS_EPOCH_SLICES / row["samples_per_s"] / 3600.0
    print(f"one epoch of {SEEDS_EPOCH_SLICES} slices: {epoch_h:.2f} h at this rate; the seeds reported "
          f"~{SEEDS_SAMPLES_PER_S:g} samples/s (~0.6 h) on their GPU (reference, not measured here): "
          f"ratio {row['samples_per_s'] / SEEDS_SAMPLES_PER_S:.3g}")


if __name__ == "__main__":
    main()
