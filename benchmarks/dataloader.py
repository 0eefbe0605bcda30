"""Shard reader throughput vs the fastest training stage's consumption, at full LoDoPaB size.

Run: ``python -m benchmarks.dataloader`` (``--samples``, ``--batch``, ``--workers``, ``--out``). In one run:

* writes a synthetic shard set (``sinogram`` 1000 x 513 and ``image`` 362 x 362, float32, one sample per
  chunk, as the LoDoPaB prep writes it) into a temporary folder;
* reads one epoch through :class:`ctpipe.data.datasets.ShardDataset` + ``DataLoader`` (shuffled, batch 8)
  for each worker count, after a warm-up epoch (page cache warm: the steady state of a multi-epoch run);
* times the ``fbp_window`` training step (LearnableFBP with the learnable WindowII, MSE, Adam) on the same
  batch size: the cheapest stage per sample, hence the hardest consumer to keep fed;
* reports samples/s and ``ratio_vs_consumer = reader / consumer`` (target >= 3).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks._common import DEFAULT_OUT, load_average, machine, print_table, today, write_rows
from ctpipe.data.datasets import ShardDataset
from ctpipe.data.shards import FieldSpec, finalize_manifest, shard_path, write_shard
from ctpipe.ops import ParallelBeamGeometry

BENCHMARKS = ("dataloader", "train_step")


@dataclass(frozen=True)
class LoaderBenchConfig:
    samples: int = 64
    samples_per_shard: int = 32
    batch: int = 8
    workers: tuple[int, ...] = (0, 2)
    train_steps: int = 3
    out: Path = DEFAULT_OUT


def write_synthetic_shards(root: Path, geometry: ParallelBeamGeometry, config: LoaderBenchConfig) -> None:
    """Random float32 samples at full size, 4 samples per patient, all in split ``train``."""
    rng = np.random.default_rng(0)
    fields = {"sinogram": FieldSpec(geometry.sinogram_shape), "image": FieldSpec(geometry.image_shape)}
    patients = []
    for shard, start in enumerate(range(0, config.samples, config.samples_per_shard)):
        n = min(config.samples_per_shard, config.samples - start)
        ids = [f"s{start + k:05d}" for k in range(n)]
        owners = [f"p{(start + k) // 4:04d}" for k in range(n)]
        patients += owners
        arrays = {"sinogram": rng.random((n, *geometry.sinogram_shape), dtype=np.float32),
                  "image": rng.random((n, *geometry.image_shape), dtype=np.float32)}
        write_shard(shard_path(root, shard), fields, arrays, ids, owners)
    finalize_manifest(root, {"train": sorted(set(patients))})


def reader_samples_per_s(root: Path, batch: int, workers: int) -> float:
    """Samples/s of one shuffled epoch, after one warm-up epoch."""
    dataset = ShardDataset(root, "train", ["sinogram", "image"])
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    for _ in loader:  # warm-up: page cache, worker start-up
        pass
    start = time.perf_counter()
    count = sum(item["sinogram"].shape[0] for item in loader)
    return count / (time.perf_counter() - start)


def train_step_samples_per_s(geometry: ParallelBeamGeometry, batch: int, steps: int) -> float:
    """fbp_window's step: LearnableFBP(WindowII) forward, MSE, backward, Adam; median of ``steps``."""
    from ctpipe.models.learnable_fbp import LearnableFBP
    from ctpipe.ops.filters import WindowII

    model = LearnableFBP(geometry, WindowII())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    sinogram = torch.rand(batch, 1, *geometry.sinogram_shape, generator=gen)
    target = torch.rand(batch, 1, *geometry.image_shape, generator=gen)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(sinogram), target)
        loss.backward()
        optimizer.step()

    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def run(config: LoaderBenchConfig) -> list[dict]:
    geometry = ParallelBeamGeometry.lodopab()
    load_before = load_average()
    consumer = train_step_samples_per_s(geometry, config.batch, config.train_steps)
    readers = {}
    with tempfile.TemporaryDirectory(prefix="ctpipe-bench-shards-") as tmp:
        root = Path(tmp)
        write_synthetic_shards(root, geometry, config)
        for workers in config.workers:
            readers[workers] = reader_samples_per_s(root, config.batch, workers)
    load_after = load_average()
    common = {"device": "cpu", "batch": config.batch, "threads": torch.get_num_threads(), "machine": machine(),
              "load_before": load_before, "load_after": load_after, "date": today()}
    rows = [{"benchmark": "train_step", "implementation": "fbp_window/LearnableFBP(WindowII)+Adam",
             "ms_per_image": 1000.0 / consumer, "samples_per_s": consumer, "ratio_vs_consumer": 1.0, **common}]
    for workers, rate in readers.items():
        rows.append({"benchmark": "dataloader", "implementation": f"ShardDataset+DataLoader(workers={workers})",
                     "ms_per_image": 1000.0 / rate, "samples_per_s": rate, "ratio_vs_consumer": rate / consumer,
                     **common})
    return rows


def parse_args(argv: list[str] | None = None) -> LoaderBenchConfig:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dataloader", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=LoaderBenchConfig.samples)
    parser.add_argument("--batch", type=int, default=LoaderBenchConfig.batch)
    parser.add_argument("--workers", type=int, nargs="+", default=list(LoaderBenchConfig.workers))
    parser.add_argument("--train-steps", type=int, default=LoaderBenchConfig.train_steps)
    parser.add_argument("--out", type=Path, default=LoaderBenchConfig.out)
    args = parser.parse_args(argv)
    return LoaderBenchConfig(samples=args.samples, batch=args.batch, workers=tuple(args.workers),
                             train_steps=args.train_steps, out=args.out)


def main(argv: list[str] | None = None) -> list[dict]:
    config = parse_args(argv)
    rows = run(config)
    write_rows(rows, config.out, BENCHMARKS)
    print(f"LoDoPaB size, {config.samples} samples, machine: {machine()}, "
          f"load average {rows[0]['load_before']} -> {rows[0]['load_after']}")
    print_table(rows, ["benchmark", "implementation", "batch", "samples_per_s", "ratio_vs_consumer"])
    print(f"written: {config.out}")
    return rows


if __name__ == "__main__":
    main()
