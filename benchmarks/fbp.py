"""FBP and forward projection: ctpipe (gather, grid_sample) vs skimage and ASTRA, on the LoDoPaB geometry.

Run: ``python -m benchmarks.fbp`` (``--repeats``, ``--batch``, ``--n-pixels/--n-angles`` for a scaled geometry,
``--out``). One run times every implementation on the same simulated sinograms (LoDoPaB-like random
phantoms in [0, 1], projected with ctpipe's reference operator), interleaving the repeats so that load on a
shared machine hits all alike; it reports the median ms per image (warm-up excluded), PSNR/SSIM of each
reconstruction against its phantom (data range = max - min of the phantom, LoDoPaB's convention) and the
speed ratios ``peer_ms / this_ms`` (> 1: faster than the peer). Conventions are aligned before timing:

* skimage: ``theta = theta_ctpipe - 90 deg``, ``sinogram.T``, values in pixel units; for an even image size
  skimage's centre is ``n // 2`` (ours ``(n - 1) / 2``), so each projection is Fourier-shifted by
  ``(cos + sin) / 2`` pixels (untimed). skimage assumes detector spacing = pixel size; LoDoPaB's is 0.2 %
  smaller, left uncorrected (it costs skimage a little PSNR at the image border).
* ASTRA (``parallel``, ``linear`` projector): angles ``theta - pi/2``, image as is, detector spacing in
  pixel units (checked in tests/benchmarks/test_fbp.py against ctpipe's forward projection).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmarks._common import (DEFAULT_OUT, interleaved_median_seconds, load_average, machine, print_table, today,
                                write_rows)
from ctpipe import metrics
from ctpipe.data.phantoms import random_patient_slices
from ctpipe.ops import ParallelBeamGeometry, fbp, forward_project
from ctpipe.ops.filters import LODOPAB_HANN_SCALING

BENCHMARKS = ("fbp", "forward_projection")
WINDOW, FREQUENCY_SCALING = "hann", LODOPAB_HANN_SCALING  # LoDoPaB's reference FBP


@dataclass(frozen=True)
class FbpBenchConfig:
    n_pixels: int = 362
    n_angles: int = 1000
    batch: int = 8
    repeats: int = 3
    seed: int = 0
    threads: int | None = None  # torch intra-op threads; None: torch's default (all cores)
    out: Path = DEFAULT_OUT

    @property
    def geometry(self) -> ParallelBeamGeometry:
        return ParallelBeamGeometry.lodopab().scaled(self.n_pixels, self.n_angles)


@dataclass(frozen=True)
class Case:
    """One implementation of one benchmark: ``run()`` processes ``batch`` images, ``result()`` its last output."""

    benchmark: str
    implementation: str
    device: str
    batch: int
    run: Callable[[], object]
    result: Callable[[], np.ndarray]  # (batch, ...) in ctpipe's conventions and units


# ---- data --------------------------------------------------------------------------------------------------
def phantoms(config: FbpBenchConfig) -> np.ndarray:
    """``(batch, N, N)`` float32 LoDoPaB-like slices in [0, 1]."""
    rng = np.random.default_rng(config.seed)
    return random_patient_slices(rng, config.batch, config.n_pixels).astype(np.float32)


def simulate(images: np.ndarray, geometry: ParallelBeamGeometry) -> np.ndarray:
    """Sinograms ``(batch, A, D)`` by ctpipe's reference operator (grid_sample), float32."""
    with torch.no_grad():
        sino = forward_project(torch.from_numpy(images)[:, None], geometry, method="grid_sample")
    return sino[:, 0].numpy()


# ---- ctpipe -----------------------------------------------------------------------------------------------------
def _holder() -> dict[str, np.ndarray]:
    return {}


def ctpipe_fbp_case(sinograms: np.ndarray, geometry: ParallelBeamGeometry, method: str, batch: int,
                    device: torch.device) -> Case:
    data = torch.from_numpy(sinograms[:batch])[:, None].to(device)
    out = _holder()

    def run() -> None:
        with torch.no_grad():
            out["x"] = fbp(data, geometry, WINDOW, FREQUENCY_SCALING, method=method)

    return Case("fbp", f"ctpipe/{method}", device.type, batch, run, lambda: out["x"][:, 0].cpu().numpy())


def ctpipe_fp_case(images: np.ndarray, geometry: ParallelBeamGeometry, method: str, batch: int,
                   device: torch.device) -> Case:
    data = torch.from_numpy(images[:batch])[:, None].to(device)
    out = _holder()

    def run() -> None:
        with torch.no_grad():
            out["x"] = forward_project(data, geometry, method=method)

    return Case("forward_projection", f"ctpipe/{method}", device.type, batch, run,
                lambda: out["x"][:, 0].cpu().numpy())


# ---- skimage ------------------------------------------------------------------------------------------------------
def fourier_shift_rows(rows: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """``out[i](t) = rows[i](t + shifts[i])`` (band-limited, zero-padded to avoid wrap-around)."""
    n = rows.shape[1]
    size = 2 ** math.ceil(math.log2(2 * n))
    spectrum = np.fft.rfft(rows, size, axis=1)
    freqs = np.fft.rfftfreq(size)
    shifted = np.fft.irfft(spectrum * np.exp(2j * np.pi * freqs[None, :] * shifts[:, None]), size, axis=1)
    return shifted[:, :n]


def skimage_sinogram(sinogram: np.ndarray, geometry: ParallelBeamGeometry) -> np.ndarray:
    """ctpipe sinogram (A, D) -> skimage's (D, A), pixel units, centre convention aligned (see module doc)."""
    rows = sinogram / geometry.pixel_size
    if geometry.n_pixels % 2 == 0:
        theta = geometry.angles
        rows = fourier_shift_rows(rows, 0.5 * (np.cos(theta) + np.sin(theta)))
    return np.ascontiguousarray(rows.T)


def skimage_theta(geometry: ParallelBeamGeometry) -> np.ndarray:
    return np.rad2deg(geometry.angles) - 90.0


def skimage_fbp_case(sinograms: np.ndarray, geometry: ParallelBeamGeometry) -> Case:
    from skimage.transform import iradon

    data = skimage_sinogram(sinograms[0], geometry)
    theta = skimage_theta(geometry)
    out = _holder()

    def run() -> None:
        out["x"] = iradon(data, theta=theta, output_size=geometry.n_pixels, filter_name=WINDOW, circle=False)

    return Case("fbp", "skimage/iradon", "cpu", 1, run, lambda: out["x"][None])


def skimage_fp_case(images: np.ndarray, geometry: ParallelBeamGeometry) -> Case:
    from skimage.transform import radon

    image, theta = images[0].astype(np.float64), skimage_theta(geometry)
    out = _holder()

    def run() -> None:
        out["x"] = radon(image, theta=theta, circle=False)

    return Case("forward_projection", "skimage/radon", "cpu", 1, run, lambda: np.full((1, 1), np.nan))


# ---- ASTRA -----------------------------------------------------------------------------------------------------
def astra_geometries(geometry: ParallelBeamGeometry) -> tuple[dict, dict]:
    """``(vol_geom, proj_geom)`` equal to ctpipe's geometry, in ASTRA's pixel units and angle convention."""
    import astra

    vol_geom = astra.create_vol_geom(geometry.n_pixels, geometry.n_pixels)
    proj_geom = astra.create_proj_geom("parallel", geometry.detector_spacing / geometry.pixel_size,
                                       geometry.n_detector, geometry.angles - math.pi / 2)
    return vol_geom, proj_geom


def astra_forward_project(image: np.ndarray, geometry: ParallelBeamGeometry) -> np.ndarray:
    """ASTRA's CPU forward projection of ``image`` (N, N), in ctpipe's units (A, D); for tests."""
    import astra

    vol_geom, proj_geom = astra_geometries(geometry)
    projector = astra.create_projector("linear", proj_geom, vol_geom)
    try:
        sino_id, sino = astra.create_sino(image.astype(np.float32), projector)
        astra.data2d.delete(sino_id)
    finally:
        astra.projector.delete(projector)
    return sino * geometry.pixel_size


def _astra_case(benchmark: str, geometry: ParallelBeamGeometry, data: np.ndarray, cuda: bool) -> Case:
    import astra

    vol_geom, proj_geom = astra_geometries(geometry)
    projector = -1 if cuda else astra.create_projector("linear", proj_geom, vol_geom)
    sino_id = astra.data2d.create("-sino", proj_geom, 0)
    vol_id = astra.data2d.create("-vol", vol_geom, 0)
    if benchmark == "fbp":
        cfg = astra.astra_dict("FBP_CUDA" if cuda else "FBP")
        cfg["ReconstructionDataId"], cfg["ProjectionDataId"] = vol_id, sino_id
        cfg["option"] = {"FilterType": WINDOW, "FilterD": FREQUENCY_SCALING}
        source, result, scale = sino_id, vol_id, 1.0
        data = data / geometry.pixel_size
    else:
        cfg = astra.astra_dict("FP_CUDA" if cuda else "FP")
        cfg["VolumeDataId"], cfg["ProjectionDataId"] = vol_id, sino_id
        source, result, scale = vol_id, sino_id, geometry.pixel_size
    if not cuda:
        cfg["ProjectorId"] = projector
    data = np.ascontiguousarray(data, dtype=np.float32)
    algorithm = astra.algorithm.create(cfg)
    out = _holder()

    def run() -> None:
        astra.data2d.store(source, data)
        astra.algorithm.run(algorithm)
        out["x"] = astra.data2d.get(result)

    name = f"astra/{cfg['type']}"
    return Case(benchmark, name, "cuda" if cuda else "cpu", 1, run, lambda: out["x"][None] * scale)


def astra_available() -> bool:
    try:
        import astra  # noqa: F401
    except ImportError:
        return False
    return True


# ---- quality ---------------------------------------------------------------------------------------------------
def quality(result: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Mean PSNR and SSIM (data range = max - min of each target) over the batch; NaN where incomparable."""
    if result.shape != target.shape or not np.isfinite(result).all():
        return float("nan"), float("nan")
    pred = torch.from_numpy(np.asarray(result, dtype=np.float64))[:, None]
    ref = torch.from_numpy(np.asarray(target, dtype=np.float64))[:, None]
    psnr = metrics.psnr(pred, ref, metrics.PER_IMAGE).mean().item()
    ssim = metrics.ssim(pred, ref, metrics.PER_IMAGE).mean().item() if min(ref.shape[-2:]) >= 11 else float("nan")
    return psnr, ssim


# ---- the run ---------------------------------------------------------------------------------------------------
def build_cases(config: FbpBenchConfig, images: np.ndarray, sinograms: np.ndarray) -> list[Case]:
    geometry = config.geometry
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    cases: list[Case] = []
    for device in devices:
        for method in ("gather", "grid_sample"):
            batches = (1, config.batch) if method == "gather" or device.type == "cuda" else (config.batch,)
            for batch in sorted(set(batches)):
                cases.append(ctpipe_fbp_case(sinograms, geometry, method, batch, device))
                cases.append(ctpipe_fp_case(images, geometry, method, batch, device))
    cases += [skimage_fbp_case(sinograms, geometry), skimage_fp_case(images, geometry)]
    if astra_available():
        import astra

        for cuda in [False] + ([True] if astra.use_cuda() else []):
            cases.append(_astra_case("fbp", geometry, sinograms[0], cuda))
            cases.append(_astra_case("forward_projection", geometry, images[0], cuda))
    return cases


def _ms_per_image(seconds: dict[str, float], cases: list[Case]) -> dict[str, float]:
    return {key: 1000.0 * seconds[key] / case.batch for key, case in zip(seconds, cases)}


def _key(case: Case) -> str:
    return f"{case.benchmark}|{case.implementation}|{case.device}|{case.batch}"


def _peer_ms(ms: dict[str, float], cases: list[Case], benchmark: str, prefix: str) -> float:
    """The fastest CPU time of the peer's implementations for ``benchmark`` (NaN when absent)."""
    values = [ms[_key(c)] for c in cases if c.benchmark == benchmark and c.device == "cpu"
              and c.implementation.startswith(prefix)]
    return min(values) if values else float("nan")


def run(config: FbpBenchConfig) -> list[dict]:
    images = phantoms(config)
    sinograms = simulate(images, config.geometry)
    exact = {"fbp": None, "forward_projection": sinograms}
    cases = build_cases(config, images, sinograms)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    load_before = load_average()
    seconds = interleaved_median_seconds({_key(c): c.run for c in cases}, config.repeats, sync)
    load_after = load_average()
    ms = _ms_per_image(seconds, cases)
    rows = []
    for case in cases:
        target = images if case.benchmark == "fbp" else exact["forward_projection"]
        psnr, ssim = quality(case.result(), target[: case.batch])
        this = ms[_key(case)]
        rows.append({
            "benchmark": case.benchmark, "implementation": case.implementation, "device": case.device,
            "batch": case.batch, "ms_per_image": this, "samples_per_s": 1000.0 / this, "psnr": psnr, "ssim": ssim,
            "ratio_vs_skimage": _peer_ms(ms, cases, case.benchmark, "skimage/") / this,
            "ratio_vs_astra_cpu": _peer_ms(ms, cases, case.benchmark, "astra/") / this,
            "ratio_vs_grid_sample": ms.get(f"{case.benchmark}|ctpipe/grid_sample|cpu|{config.batch}", math.nan) / this,
            "threads": torch.get_num_threads(), "machine": machine(), "load_before": load_before,
            "load_after": load_after, "date": today(),
        })
    return rows


def parse_args(argv: list[str] | None = None) -> FbpBenchConfig:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fbp", description=__doc__.splitlines()[0])
    parser.add_argument("--n-pixels", type=int, default=FbpBenchConfig.n_pixels)
    parser.add_argument("--n-angles", type=int, default=FbpBenchConfig.n_angles)
    parser.add_argument("--batch", type=int, default=FbpBenchConfig.batch)
    parser.add_argument("--repeats", type=int, default=FbpBenchConfig.repeats)
    parser.add_argument("--seed", type=int, default=FbpBenchConfig.seed)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    parser.add_argument("--out", type=Path, default=FbpBenchConfig.out)
    args = parser.parse_args(argv)
    return FbpBenchConfig(args.n_pixels, args.n_angles, args.batch, args.repeats, args.seed, args.threads, args.out)


def main(argv: list[str] | None = None) -> list[dict]:
    config = parse_args(argv)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    rows = run(config)
    write_rows(rows, config.out, BENCHMARKS)
    print(f"geometry {config.geometry!r}, {torch.get_num_threads()} torch threads, machine: {machine()}, "
          f"load average {rows[0]['load_before']} -> {rows[0]['load_after']}")
    print_table(rows, ["benchmark", "implementation", "device", "batch", "ms_per_image", "psnr", "ssim",
                       "ratio_vs_skimage", "ratio_vs_astra_cpu", "ratio_vs_grid_sample"])
    print(f"written: {config.out}")
    return rows


if __name__ == "__main__":
    main()
