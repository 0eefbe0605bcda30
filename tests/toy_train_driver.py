"""Run the toy task under the real Trainer in its own process (1 rank, or N ranks under torchrun).

Prints ``STEP <global_step> <pid>`` after every step so a test can send signals at chosen steps.
Exit code 0 = completed, 3 = preempted (stopped by SIGUSR2/SIGTERM after writing latest.pt).
"""

from __future__ import annotations

import os
import sys
import time

import torch

from ctpipe import distributed as dist_utils
from ctpipe.config import SchedulerConfig, TrainConfig
from ctpipe.train import RunSettings, StopFlag, Trainer
from tests.toy_task import ToyTask


def say(line: str) -> None:
    """One write per line: the ranks share stdout, and with PYTHONUNBUFFERED print() writes the text and its
    newline separately, so two ranks' lines could interleave ("STATUS preemptedSTATUS preempted")."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(run_dir: str, step_sleep: float) -> int:
    env = dist_utils.detect_env()
    device = torch.device("cpu")
    dist_utils.init_distributed(env, device)
    cfg = TrainConfig(epochs=4, seed=5, early_stopping_patience=None, log_every=10_000,
                      checkpoint_interval_s=0.0)  # 'latest' after every step: a SIGKILL loses at most one step
    holder: dict[str, Trainer] = {}

    def on_step(_n: int) -> None:
        extra = ""
        if os.environ.get("CTPIPE_DEBUG_SUM"):
            extra = " " + repr(float(sum(p.double().sum() for p in task.model.parameters())))
        say(f"STEP {holder['t'].state.global_step + 1} {env.rank}{extra}")
        time.sleep(step_sleep)

    task = ToyTask(n_train=48, on_step=on_step)
    flag = StopFlag()
    settings = RunSettings(cfg, SchedulerConfig(name="cosine"), batch_size=4, record={"toy": True})
    trainer = Trainer(task, settings, run_dir, device, env, flag, progress=False)
    holder["t"] = trainer
    with flag.installed():
        result = trainer.fit()
    dist_utils.shutdown()
    say(f"STATUS {result.status}")
    return 3 if result.status == "preempted" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2])))
