"""The FBP benchmark's conventions (peers aligned with ctpipe) and its CSV, on a tiny geometry."""

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks import fbp as bench
from benchmarks._common import COLUMNS, interleaved_median_seconds
from ctpipe.ops import ParallelBeamGeometry, fbp, forward_project

SMALL = ParallelBeamGeometry.lodopab().scaled(64, 60)


def _test_image(geometry: ParallelBeamGeometry) -> np.ndarray:
    c = geometry.pixel_centers
    X, Y = np.meshgrid(c, c, indexing="ij")
    return np.exp(-((X - 0.03) ** 2 + (Y + 0.05) ** 2) / 0.02**2) + 0.5 * ((X / 0.1) ** 2 + (Y / 0.07) ** 2 < 1)


def test_astra_geometry_matches_ctpipe_convention():
    """ASTRA angle = theta - pi/2 and the image as is; any other choice would be far off (asymmetric image)."""
    pytest.importorskip("astra", reason="astra-toolbox is a test extra")
    image = _test_image(SMALL)
    ours = forward_project(torch.from_numpy(image)[None, None], SMALL)[0, 0].numpy()
    theirs = bench.astra_forward_project(image, SMALL)
    assert np.linalg.norm(theirs - ours) / np.linalg.norm(ours) < 0.01
    mirrored = bench.astra_forward_project(image.T, SMALL)  # x and y swapped: a different sinogram
    assert np.linalg.norm(mirrored - ours) / np.linalg.norm(ours) > 0.1


def test_skimage_alignment_for_even_size():
    """With the half-pixel Fourier shift, skimage's iradon of our sinogram is our FBP (detector spacing =
    pixel size here, skimage's assumption); without it, it is not."""
    from skimage.transform import iradon

    geometry = ParallelBeamGeometry(64, 90, 93, image_half_width=0.13, detector_half_width=93 * 0.13 / 64)
    c = geometry.pixel_centers
    X, Y = np.meshgrid(c, c, indexing="ij")
    image = np.exp(-((X - 0.03) ** 2 + (Y + 0.05) ** 2) / 0.02**2) + 0.5 * np.exp(-((X + 0.04) ** 2 + (Y - 0.02) ** 2) / 0.01**2)
    sino = forward_project(torch.from_numpy(image)[None, None], geometry)
    ours = fbp(sino, geometry, "ram-lak", 1.0)[0, 0].numpy()
    sino = sino[0, 0].numpy()
    theta = bench.skimage_theta(geometry)
    aligned = iradon(bench.skimage_sinogram(sino, geometry), theta=theta, output_size=64, filter_name="ramp",
                     circle=False)
    unshifted = iradon(np.ascontiguousarray(sino.T / geometry.pixel_size), theta=theta, output_size=64,
                       filter_name="ramp", circle=False)

    def error(x: np.ndarray) -> float:
        return float(np.linalg.norm(x - ours) / np.linalg.norm(ours))

    assert error(aligned) < 0.04
    assert error(unshifted) > 0.1


def test_fourier_shift_moves_a_bump():
    t = np.arange(64, dtype=np.float64)
    rows = np.exp(-((t - 30.0) ** 2) / 8.0)[None]
    shifted = bench.fourier_shift_rows(rows, np.array([2.5]))  # out(t) = in(t + 2.5): peak at 27.5
    np.testing.assert_allclose(shifted[0], np.exp(-((t - 27.5) ** 2) / 8.0), atol=1e-6)


def test_interleaved_timing_runs_warmup_plus_repeats():
    calls = {"a": 0, "b": 0}

    def bump(name):
        calls[name] += 1

    result = interleaved_median_seconds({"a": lambda: bump("a"), "b": lambda: bump("b")}, repeats=3)
    assert calls == {"a": 4, "b": 4} and set(result) == {"a", "b"}
    with pytest.raises(ValueError, match="repeats"):
        interleaved_median_seconds({"a": lambda: None}, repeats=0)


def test_tiny_run_writes_every_implementation(tmp_path):
    out = tmp_path / "benchmarks.csv"
    pd.DataFrame([{"benchmark": "dataloader", "implementation": "kept", "batch": 8}]).to_csv(out, index=False)
    rows = bench.main(["--n-pixels", "32", "--n-angles", "24", "--batch", "2", "--repeats", "1", "--out", str(out)])
    table = pd.read_csv(out)
    assert list(table.columns) == list(COLUMNS)
    assert "kept" in set(table["implementation"])  # other benchmarks' rows survive
    fbp_rows = table[table["benchmark"] == "fbp"].set_index(["implementation", "batch"])
    assert {"ctpipe/gather", "ctpipe/grid_sample", "skimage/iradon"} <= set(fbp_rows.index.get_level_values(0))
    assert (table.loc[table["benchmark"].isin(bench.BENCHMARKS), "ms_per_image"] > 0).all()
    # the fast path reconstructs exactly as well as the reference; the peers are in the same range
    fast, exact = fbp_rows.loc[("ctpipe/gather", 2), "psnr"], fbp_rows.loc[("ctpipe/grid_sample", 2), "psnr"]
    assert abs(fast - exact) < 0.05
    assert abs(fbp_rows.loc[("skimage/iradon", 1), "psnr"] - exact) < 3.0
    assert len(rows) == len(table) - 1
