"""Model check for the X-ray -> CT networks: forward/backward, loss, AMP, parameters, peak memory, step time.

For each of stage1_64 (XRay2CT64 + the stage loss L1 + 0.5 (1 - SSIM3D)), refine_256 (ResidualUpsampler3D over a 64^3
input, multi-scale L1 + 0.1 edge) and direct_256 (XRay2CTProgressive, gradient checkpointing, multi-scale L1 + 0.1 edge)
at batch 1 and 8: one training step (forward, loss, backward) in float32 and under autocast (bf16 on CUDA, bf16
on CPU), the finite loss, the parameter count, the measured peak memory (CUDA: torch.cuda.max_memory_allocated;
CPU: not measured, shown as "-") and the :func:`ctpipe.models.memory.estimate_memory` estimate. On CUDA the
default configs are used; on CPU the tiny ones (a 256^3 step does not fit a CPU test machine's time budget).

Run: ``python -m benchmarks.model_check_xray2ct [--device cpu|cuda] [--batches 1 8] [--tiny]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Callable

import torch
from torch import Tensor, nn

from ctpipe.losses import VolumeLoss, VolumeLossConfig, ssim3d
from ctpipe.models.memory import estimate_memory
from ctpipe.models.residual_upsampler3d import RESIDUAL_UPSAMPLER3D_TINY, ResidualUpsampler3D, ResidualUpsampler3DConfig
from ctpipe.models.xray2ct import XRAY2CT_TINY, XRay2CT64, XRay2CTConfig, count_parameters
from ctpipe.models.xray2ct_progressive import XRAY2CT_PROGRESSIVE_TINY, XRay2CTProgressive, XRay2CTProgressiveConfig

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    config: object
    build: Callable[[object], nn.Module]
    inputs: Callable[[object, int, torch.device], Tensor]
    loss: Callable[[object, Tensor], Tensor]


def _xray(cfg: XRay2CTConfig, batch: int, device: torch.device) -> Tensor:
    return torch.rand(batch, cfg.n_views, cfg.xray_size, cfg.xray_size, device=device)


def _stage1_loss(out: Tensor) -> Tensor:
    target = torch.rand_like(out, dtype=torch.float32)
    pred = out.float()
    loss = (pred - target).abs().mean()
    if min(pred.shape[2:]) >= 11:
        loss = loss + 0.5 * (1 - ssim3d(pred, target).mean())
    return loss


def _multiscale_loss(outputs: dict[int, Tensor]) -> Tensor:
    size = max(outputs)
    target = torch.rand(outputs[size].shape, device=outputs[size].device)
    loss = VolumeLoss(VolumeLossConfig(l1=1.0, edge=0.1, scale_weights=(0.25, 0.5, 1.0)))
    return loss.multiscale(outputs, target)[0]


def cases(tiny: bool) -> list[Case]:
    stage1 = XRAY2CT_TINY if tiny else XRay2CTConfig()
    refine = dataclasses.replace(RESIDUAL_UPSAMPLER3D_TINY, input_size=16) if tiny else ResidualUpsampler3DConfig()
    direct = XRAY2CT_PROGRESSIVE_TINY if tiny else XRay2CTProgressiveConfig(gradient_checkpointing=True)
    return [
        Case("stage1_64", stage1, XRay2CT64, _xray, lambda c, o: _stage1_loss(o)),  # type: ignore[arg-type]
        Case("refine_256", refine, ResidualUpsampler3D,  # type: ignore[arg-type]
             lambda c, b, d: torch.rand(b, 1, c.input_size, c.input_size, c.input_size, device=d),  # type: ignore[attr-defined]
             lambda c, o: _multiscale_loss(o)),  # type: ignore[arg-type]
        Case("direct_256", direct, XRay2CTProgressive, lambda c, b, d: _xray(c.backbone, b, d),  # type: ignore[arg-type,attr-defined]
             lambda c, o: _multiscale_loss(o)),  # type: ignore[arg-type]
    ]


def run_step(case: Case, model: nn.Module, batch: int, device: torch.device, amp: bool) -> tuple[float, float, float]:
    """``(loss, seconds, peak GiB or nan)`` of one forward + loss + backward."""
    x = case.inputs(case.config, batch, device)
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    context = torch.autocast(device.type, dtype=torch.bfloat16) if amp else torch.autocast(device.type, enabled=False)
    with context:
        out = model(x)
        loss = case.loss(case.config, out)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if not torch.isfinite(loss):
        raise RuntimeError(f"{case.name}: non-finite loss {loss.item()}")
    if not all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters()):
        raise RuntimeError(f"{case.name}: non-finite gradients")
    peak = torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else float("nan")
    return float(loss.detach()), seconds, peak


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tiny", action="store_true", help="tiny configs (default on CPU)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    tiny = args.tiny or device.type == "cpu"
    print(f"device {device}, {'tiny' if tiny else 'default'} configs, torch {torch.__version__}")
    header = f"{'model':<11} {'batch':>5} {'amp':>5} {'params':>11} {'loss':>8} {'step s':>8} {'peak GiB':>9} {'est. GiB':>9}"
    print(header)
    print("-" * len(header))
    for case in cases(tiny):
        torch.manual_seed(0)
        model = case.build(case.config).to(device).train()
        params = count_parameters(model)
        for batch in args.batches:
            for amp in (False, True):
                estimate = estimate_memory(case.config, batch, amp=amp)["total_bytes"] / GIB  # type: ignore[arg-type]
                try:
                    loss, seconds, peak = run_step(case, model, batch, device, amp)
                    row = f"{loss:>8.4f} {seconds:>8.3f} {'-' if peak != peak else f'{peak:.2f}':>9}"
                except torch.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    row = f"{'OOM':>8} {'-':>8} {'-':>9}"
                print(f"{case.name:<11} {batch:>5} {('bf16' if amp else 'fp32'):>5} {params:>11,} {row} {estimate:>9.2f}")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
