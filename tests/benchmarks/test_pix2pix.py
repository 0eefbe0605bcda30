"""The pix2pix throughput benchmark runs the real task step at the seeds' settings and writes its CSV row."""

from pathlib import Path

import pandas as pd
import torch

from benchmarks import pix2pix as bench
from tests.threads import one_torch_thread


def test_bench_times_the_seeds_task_step_and_writes_a_row(tmp_path: Path) -> None:
    with one_torch_thread():
        shards = bench.write_shard_set(tmp_path / "data", 256)
        config = bench.Pix2PixBenchConfig(side=256, batch=2, steps=1, generator="unet_256", out=tmp_path / "b.csv")
        task, stepper = bench.build_task(shards, config, torch.device("cpu"), "none")
        assert (task.cfg.model.norm, task.cfg.loss.lambda_l1, task.cfg.optim.lr) == ("instance", 50.0, 1e-4)
        batch = bench.resident_batch(task, 2, torch.device("cpu"))
        assert batch["input"].shape == (2, 1, 256, 256)
        weights = {k: v.clone() for k, v in task.G.state_dict().items()}
        assert bench.time_steps(task, stepper, batch, 1, torch.device("cpu")) > 0
        assert any(not torch.equal(v, task.G.state_dict()[k]) for k, v in weights.items())  # G really stepped
        bench.main(["--side", "256", "--generator", "unet_256", "--batch", "1", "--steps", "1", "--device", "cpu",
                    "--out", str(tmp_path / "b.csv")])
    rows = pd.read_csv(tmp_path / "b.csv")
    assert rows["benchmark"].tolist() == [bench.BENCHMARK] and rows["samples_per_s"].iloc[0] > 0
    assert rows["implementation"].iloc[0] == "unet_256 instance amp=none"
