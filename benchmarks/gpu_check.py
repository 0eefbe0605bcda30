"""``make gpu-check``: one prepared acceptance run of the GPU path (under 8 minutes on one GPU).

Checks, in order (each is a row group of ``results/gpu_check.csv``; the table is printed last):

* ``cuda_tests``: ``pytest -m cuda`` (every CUDA-marked test);
* ``one_rank_group``: a 1-rank process group (``cpu:gloo,cuda:nccl`` on CUDA) forced through the distributed
  code path: DDP wrapper, every trainer/evaluation/checkpoint collective, resume, the evaluation wait;
* ``two_rank_stage1``: a tiny ``stage1_64`` DDP job on 2 ranks sharing the one GPU (``cuda:gloo``: NCCL
  refuses two ranks on one device) under torchrun, SIGUSR2 mid-epoch, then a resume to completion;
* ``amp_step``: one bf16 and one fp16 training step of each stage's network at the source settings
  (samples/s, ``max_memory_allocated``, ``estimate_memory``, the source experiments' figure);
* ``fbp``: ctpipe's FBP images/s and PSNR against ASTRA's CUDA FBP on the LoDoPaB geometry.

Without CUDA it prints "no CUDA device: CPU dry run" and runs the same code paths at tiny sizes on the CPU
(ASTRA's CPU FBP as the peer). Exit status 0 only if every path ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "results" / "gpu_check.csv"
COLUMNS = ("check", "variant", "status", "seconds", "samples_per_s", "max_memory_gib", "estimate_gib",
           "source_figure", "note")
GIB = 2.0**30


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What runs: the source settings on CUDA, tiny stand-ins on the CPU."""

    cuda: bool

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", 0) if self.cuda else torch.device("cpu")


# ---- helpers ------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **extra}


def _row(check: str, variant: str, status: str = "ok", **fields: Any) -> dict[str, Any]:
    return {"check": check, "variant": variant, "status": status, **fields}


def _guarded(check: str, fn: Callable[[], list[dict[str, Any]]], log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Run one check; an exception becomes a FAILED row (the run goes on, the exit status says it)."""
    started = time.monotonic()
    try:
        rows = fn()
    except Exception as err:  # every failure is reported, none ends the run
        log(traceback.format_exc())
        rows = [_row(check, "-", f"FAILED: {type(err).__name__}: {str(err)[:300]}")]
    for row in rows:
        row.setdefault("seconds", round(time.monotonic() - started, 2))
    return rows


# ---- 1. CUDA-marked tests -------------------------------------------------------------------------------------
def check_cuda_tests(sizes: Sizes, log: Callable[[str], None]) -> list[dict[str, Any]]:
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "--ignore=tests/slurm",
           "tests"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    log(proc.stdout[-4000:] + proc.stderr[-2000:])
    summary = (proc.stdout.strip().splitlines() or ["?"])[-1]
    ok = proc.returncode == 0 and (sizes.cuda or "skipped" in summary)
    return [_row("cuda_tests", "pytest -m cuda", "ok" if ok else f"FAILED (exit {proc.returncode})", note=summary)]


# ---- 2. one rank through the distributed path ----------------------------------------------------------------
def _register_cuda_only() -> None:
    """On the CPU: a backend that torch hands CUDA tensors only (as NCCL), so a CPU tensor sent to the CUDA
    side of the group would fail here as it would on a GPU node."""
    import torch.distributed as dist

    if "cudaonly" not in dist.Backend.backend_list:
        dist.Backend.register_backend(
            "cudaonly", lambda store, rank, size, timeout: dist.ProcessGroupGloo(store, rank, size, timeout),
            devices=["cuda"])


def one_rank_worker(run_dir: str) -> dict[str, Any]:
    """In a fresh process (RANK=0, WORLD_SIZE=1): the toy task through DDP and every collective."""
    from ctpipe import distributed as dist_utils
    from ctpipe.config import SchedulerConfig, TrainConfig
    from ctpipe.train import RunSettings, Trainer
    from tests.toy_task import ToyTask

    cuda = os.environ.get("CTPIPE_GPU_CHECK_DEVICE") == "cuda"
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if not cuda:
        _register_cuda_only()
    env = dist_utils.detect_env()
    dist_utils.init_distributed(env, device, timeout_s=120, cuda_backend=None if cuda else "cudaonly", force=True)
    import torch.distributed as dist

    backend = str(dist.get_backend_config()) if hasattr(dist, "get_backend_config") else "?"
    cfg = TrainConfig(epochs=2, seed=1, early_stopping_patience=None, log_every=1000, checkpoint_interval_s=0.0,
                      device="cuda" if cuda else "cpu")
    task = ToyTask(n_train=24)
    settings = RunSettings(cfg, SchedulerConfig(name="cosine"), batch_size=4)
    trainer = Trainer(task, settings, run_dir, device, env, progress=False)
    wrapped = type(trainer.train_modules["model"]).__name__
    first = trainer.fit()
    resumed = Trainer(ToyTask(n_train=24), dataclasses.replace(settings, train=dataclasses.replace(cfg, epochs=3)),
                      run_dir, device, env, progress=False)
    second = resumed.fit()
    val = resumed.evaluate(task.val_set)
    dist_utils.barrier()
    dist_utils.wait_for_all()
    token = dist_utils.broadcast_object("token")
    dist_utils.shutdown()
    return {"backend": backend, "wrapper": wrapped, "status": [first.status, second.status], "val_loss": val["loss"],
            "token": token}


def check_one_rank(sizes: Sizes, log: Callable[[str], None], work: Path) -> list[dict[str, Any]]:
    env = _env(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               CTPIPE_GPU_CHECK_DEVICE=sizes.device.type)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--worker", str(work / "one_rank")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log(proc.stderr[-4000:])
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"worker exit {proc.returncode}: {proc.stderr[-500:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    ok = (result["status"] == ["completed", "completed"] and result["wrapper"] == "DistributedDataParallel"
          and result["token"] == "token" and math.isfinite(result["val_loss"]))
    return [_row("one_rank_group", "toy task, DDP, all collectives, resume", "ok" if ok else "FAILED",
                 note=f"backend {result['backend']}; {result['wrapper']}; val_loss {result['val_loss']:.4g}")]


# ---- 3. two ranks on one GPU: tiny stage1_64 with SIGUSR2 and resume ----------------------------------------------
TINY_STAGE1 = ["model.preset=tiny", "data.volume_field=volume_16", "data.high_field=volume_32", "train.amp=none",
               "data.batch_size=2", "data.eval_batch_size=2", "data.num_workers=0", "train.log_every=1",
               "train.grad_clip=null", "train.epochs=2", "train.checkpoint_interval_s=0", "optim.lr=3e-3"]


def _descendants(pid: int) -> list[int]:
    children = [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                               text=True).stdout.split()]
    return children + [d for c in children for d in _descendants(c)]


def _torchrun(run_dir: Path, shards: Path, sizes: Sizes, stop_after_step: int | None,
              log: Callable[[str], None]) -> int:
    device = "cuda" if sizes.cuda else "cpu"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "ctpipe", "train", "stage1_64", "--run-dir", str(run_dir),
           f"data.root={shards}", f"train.device={device}", *TINY_STAGE1]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(CTPIPE_CUDA_BACKEND="gloo"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    assert proc.stdout is not None
    sent = False
    for line in proc.stdout:
        log(line.rstrip())
        if stop_after_step is not None and not sent and f"step {stop_after_step}/" in line:
            for pid in _descendants(proc.pid):
                try:
                    os.kill(pid, signal.SIGUSR2)
                except ProcessLookupError:
                    pass
            sent = True
    return proc.wait(timeout=600)


def check_two_ranks(sizes: Sizes, log: Callable[[str], None], work: Path) -> list[dict[str, Any]]:
    from ctpipe.checkpoint import LATEST, load_checkpoint
    from ctpipe.data.drr_prep import prep_drr
    from ctpipe.data.synthetic_ct import write_synthetic_ct

    write_synthetic_ct(work / "ct", 10, size=32, spacing_mm=10.0, seed=3)
    prep_drr(work / "ct", work / "shards", xray_size=32, volume_sizes=(16, 32))
    shards = work / "shards"
    run_dir = work / "stage1_two_ranks"
    code = _torchrun(run_dir, shards, sizes, 1, log)
    latest = load_checkpoint(run_dir / "checkpoints" / LATEST)
    preempted = code != 0 and '"preempted"' in (run_dir / "events.jsonl").read_text() and latest["epoch"] < 2
    stopped_at = (latest["epoch"], latest["step_in_epoch"])
    code = _torchrun(run_dir, shards, sizes, None, log)
    events = (run_dir / "events.jsonl").read_text()
    final = load_checkpoint(run_dir / "checkpoints" / LATEST)
    ok = preempted and code == 0 and '"resumed"' in events and final["epoch"] == 2 and len(final["rank_states"]) == 2
    return [_row("two_rank_stage1", "2 ranks, one device, SIGUSR2 + resume", "ok" if ok else "FAILED",
                 note=f"stopped at epoch {stopped_at[0]} step {stopped_at[1]}; resumed to epoch {final['epoch']}")]


# ---- 4. one bf16 and one fp16 step of each stage's network ----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StepCase:
    stage: str
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[int], torch.Tensor]
    batch: int
    source: str
    estimate: Callable[[bool], float] | None = None  # GiB for amp on/off


def _volume_output(out: Any) -> torch.Tensor:
    if isinstance(out, dict):
        return out[max(out)]
    return out


def step_cases(sizes: Sizes) -> list[StepCase]:
    from ctpipe.models.memory import estimate_memory
    from ctpipe.models.pix2pix import build_generator
    from ctpipe.models.postprocessing_unet import PostProcessingUNet, PostProcessingUNetConfig
    from ctpipe.models.residual_upsampler3d import (RESIDUAL_UPSAMPLER3D_TINY, ResidualUpsampler3D,
                                                    ResidualUpsampler3DConfig)
    from ctpipe.models.xray2ct import XRAY2CT_TINY, XRay2CT64, XRay2CTConfig
    from ctpipe.models.xray2ct_progressive import XRAY2CT_PROGRESSIVE_TINY, XRay2CTProgressive, XRay2CTProgressiveConfig

    big = sizes.cuda
    x64 = XRay2CTConfig() if big else XRAY2CT_TINY
    refine = dataclasses.replace(ResidualUpsampler3DConfig() if big else RESIDUAL_UPSAMPLER3D_TINY,
                                 gradient_checkpointing=True)
    direct = dataclasses.replace(XRay2CTProgressiveConfig() if big else XRAY2CT_PROGRESSIVE_TINY,
                                 gradient_checkpointing=True)
    unet2d = PostProcessingUNetConfig() if big else PostProcessingUNetConfig.tiny()
    b64, b256, b_pix, b_unet = (8, 2, 4, 4) if big else (2, 1, 1, 1)
    pix_side, unet_side = (512, 362) if big else (32, 32)
    pix_downs = {} if big else {"num_downs": 5, "ngf": 8}

    def est(config: Any, batch: int) -> Callable[[bool], float]:
        return lambda amp: estimate_memory(config, batch, amp=amp)["total_bytes"] / GIB

    return [
        StepCase("stage1_64", lambda: XRay2CT64(x64), lambda b: torch.rand(b, x64.n_views, x64.xray_size,
                                                                           x64.xray_size), b64,
                 "2-3 samples/s on 4 A100 (64^3)", est(x64, b64)),
        StepCase("refine_256", lambda: ResidualUpsampler3D(refine), lambda b: torch.rand(b, 1, *(refine.input_size,) * 3), b256,
                 "0.3-0.7 samples/s on 4 A100 (256^3)", est(refine, b256)),
        StepCase("direct_256", lambda: XRay2CTProgressive(direct), lambda b: torch.rand(b, direct.backbone.n_views,
                                                                              direct.backbone.xray_size,
                                                                              direct.backbone.xray_size), b256,
                 "0.3-0.7 samples/s on 4 A100 (256^3)", est(direct, b256)),
        StepCase("pix2pix_unet_512", lambda: build_generator("unet_512", **pix_downs),
                 lambda b: torch.rand(b, 1, pix_side, pix_side), b_pix, "about 4 samples/s on one GPU"),
        StepCase("fbp_unet", lambda: PostProcessingUNet(unet2d), lambda b: torch.rand(b, 1, unet_side, unet_side), b_unet,
                 "not given by the source"),
    ]


def _train_step(model: torch.nn.Module, x: torch.Tensor, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, dtype: torch.dtype, device: torch.device) -> None:
    with torch.autocast(device.type, dtype=dtype):
        out = _volume_output(model(x))
        loss = (out.float() - 0.5).abs().mean()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def check_amp_steps(sizes: Sizes, log: Callable[[str], None]) -> list[dict[str, Any]]:
    device = sizes.device
    rows = []
    for case in step_cases(sizes):
        for amp in ("bf16", "fp16"):
            rows += _guarded("amp_step", lambda c=case, a=amp: [_one_amp_step(c, a, device, sizes)], log)
            if sizes.cuda:
                torch.cuda.empty_cache()
    return rows


def _one_amp_step(case: StepCase, amp: str, device: torch.device, sizes: Sizes) -> dict[str, Any]:
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    torch.manual_seed(0)
    model = case.build().to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16" and device.type == "cuda")
    x = case.inputs(case.batch).to(device)
    sync = torch.cuda.synchronize if sizes.cuda else (lambda: None)
    if sizes.cuda:  # warm-up (cuDNN autotuning, allocator); the CPU dry run times its one step
        _train_step(model, x, optimizer, scaler, dtype, device)
    sync()
    if sizes.cuda:
        torch.cuda.reset_peak_memory_stats(device)
    repeats = 3 if sizes.cuda else 1
    started = time.perf_counter()
    for _ in range(repeats):
        _train_step(model, x, optimizer, scaler, dtype, device)
    sync()
    seconds = (time.perf_counter() - started) / repeats
    peak = torch.cuda.max_memory_allocated(device) / GIB if sizes.cuda else float("nan")
    estimate = case.estimate(True) if case.estimate is not None else float("nan")
    return _row("amp_step", f"{case.stage} {amp} batch {case.batch}", samples_per_s=round(case.batch / seconds, 3),
                max_memory_gib=round(peak, 3), estimate_gib=round(estimate, 3),
                source_figure=case.source if sizes.cuda else "(CPU dry run, tiny sizes)")


# ---- 5. FBP images/s against ASTRA ------------------------------------------------------------------------------
def check_fbp(sizes: Sizes, log: Callable[[str], None]) -> list[dict[str, Any]]:
    from benchmarks.fbp import FREQUENCY_SCALING, WINDOW, FbpBenchConfig, _astra_case, phantoms, quality, simulate
    from ctpipe.ops import fbp

    config = FbpBenchConfig(batch=64, repeats=5) if sizes.cuda else FbpBenchConfig(n_pixels=48, n_angles=40,
                                                                                  batch=4, repeats=1)
    geometry = config.geometry
    images = phantoms(config)
    sinograms = simulate(images, geometry)
    device = sizes.device
    data = torch.from_numpy(sinograms)[:, None].to(device)
    sync = torch.cuda.synchronize if sizes.cuda else (lambda: None)
    with torch.no_grad():
        out = fbp(data, geometry, WINDOW, FREQUENCY_SCALING)  # warm-up: builds the cached index tensors
        sync()
        started = time.perf_counter()
        for _ in range(config.repeats):
            out = fbp(data, geometry, WINDOW, FREQUENCY_SCALING)
        sync()
    ours = config.batch * config.repeats / (time.perf_counter() - started)
    ours_psnr, _ = quality(out[:, 0].float().cpu().numpy(), images)
    rows = [_row("fbp", f"ctpipe fp32 {device.type} batch {config.batch}", samples_per_s=round(ours, 1),
                 note=f"PSNR {ours_psnr:.2f} dB; target >= 2000/s on H100/H200" if sizes.cuda
                 else f"PSNR {ours_psnr:.2f} dB")]
    import astra

    cuda_astra = sizes.cuda and astra.use_cuda()
    case = _astra_case("fbp", geometry, sinograms[0], cuda=cuda_astra)
    case.run()
    started = time.perf_counter()
    for _ in range(config.repeats):
        case.run()
    peer = config.repeats / (time.perf_counter() - started)
    peer_psnr, _ = quality(case.result(), images[:1])
    rows.append(_row("fbp", f"ASTRA {'FBP_CUDA' if cuda_astra else 'FBP (CPU)'}", samples_per_s=round(peer, 1),
                     note=f"PSNR {peer_psnr:.2f} dB; ctpipe/ASTRA = {ours / peer:.1f}x"))
    return rows


# ---- the run -------------------------------------------------------------------------------------------------------
def run_checks(out: Path, cuda: bool) -> list[dict[str, Any]]:
    sizes = Sizes(cuda)
    log_lines: list[str] = []

    def log(text: str) -> None:
        log_lines.append(text)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        rows += _guarded("cuda_tests", lambda: check_cuda_tests(sizes, log), log)
        rows += _guarded("one_rank_group", lambda: check_one_rank(sizes, log, work), log)
        rows += _guarded("two_rank_stage1", lambda: check_two_ranks(sizes, log, work), log)
        rows += check_amp_steps(sizes, log)
        rows += _guarded("fbp", lambda: check_fbp(sizes, log), log)
    write_results(rows, out, "\n".join(log_lines))
    return rows


def write_results(rows: list[dict[str, Any]], out: Path, log_text: str) -> None:
    import pandas as pd

    from ctpipe.atomic import atomic_write_frame, atomic_write_text

    frame = pd.DataFrame(rows).reindex(columns=list(COLUMNS))
    atomic_write_frame(frame, out, index=False)
    atomic_write_text(out.with_suffix(".log"), log_text + "\n")


def print_table(rows: list[dict[str, Any]]) -> None:
    widths = {c: max(len(c), *(len(_cell(r.get(c))) for r in rows)) for c in COLUMNS}
    print("  ".join(c.ljust(widths[c]) for c in COLUMNS))
    for row in rows:
        print("  ".join(_cell(row.get(c)).ljust(widths[c]) for c in COLUMNS))


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="CSV to write (the log goes beside it)")
    parser.add_argument("--cpu", action="store_true", help="the CPU dry run even when a GPU is visible")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print("RESULT " + json.dumps(one_rank_worker(args.worker)), flush=True)
        return 0
    cuda = torch.cuda.is_available() and not args.cpu
    if not cuda:
        print("no CUDA device: CPU dry run", flush=True)
    started = time.monotonic()
    rows = run_checks(args.out, cuda)
    print(f"gpu-check: {len(rows)} rows in {time.monotonic() - started:.0f} s -> {args.out}")
    print_table(rows)
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        print(f"gpu-check: {len(failed)} path(s) FAILED (see {args.out.with_suffix('.log')})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
