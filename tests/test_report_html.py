"""``ctpipe aggregate`` writes a self-contained report.html; rendered in a real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctpipe.report import aggregate

PSNR, SSIM = "psnr_hu[range=4095]", "ssim2d_hu[range=4095]"


def _write_run(root: Path, name: str, seed: int) -> Path:
    """The files a pix2pix_phase run leaves behind: config, history, per-volume eval CSVs and examples."""
    run = root / "pix2pix_phase" / name
    rng = np.random.default_rng(seed)
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"stage": "pix2pix_phase", "experiment": "pix2pix_phase"}))
    epochs = np.arange(1, 6)
    pd.DataFrame({"epoch": epochs, "train_G_l1": 0.2 / epochs, "train_G_gan": 0.7 + 0.01 * epochs,
                  "val_loss": 0.1 / epochs, "val_psnr[range=-1..1]": 30 + epochs, "lr": [2e-3] * 3 + [1e-3, 5e-4]}
                 ).to_csv(run / "history.csv", index=False)
    pd.DataFrame({"wall_s": [12.5, 11.0]}).to_csv(run / "timing.csv", index=False)
    for split in ("validation", "test"):
        folder = run / "eval" / split
        folder.mkdir(parents=True)
        ids = [f"patient_{k}" for k in range(6)]
        for model, offset in (("pix2pix", 2.0), ("identity", 0.0)):
            pd.DataFrame({"model": model, "sample_id": ids, "patient_id": ids,
                          PSNR: 40 + offset + rng.normal(0, 0.5, 6), SSIM: 0.98 + offset / 1000 + rng.normal(0, 1e-3, 6),
                          "mae_hu": 15 - offset + rng.normal(0, 1, 6)}).to_csv(folder / f"{model}.csv", index=False)
        yy, xx = np.mgrid[:48, :48]
        body = np.where((yy - 24) ** 2 + (xx - 24) ** 2 < 20 ** 2, 40.0, -1000.0)
        heart = np.where((yy - 22) ** 2 + (xx - 26) ** 2 < 8 ** 2, 300.0, body)
        np.savez(folder / "examples.npz", target=np.stack([heart] * 2), pix2pix=np.stack([heart + 5] * 2),
                 identity=np.stack([body] * 2))
    return run


@pytest.fixture()
def report(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    _write_run(tmp_path / "runs", "a", 0)
    _write_run(tmp_path / "runs", "b", 1)
    return tmp_path / "results", aggregate(tmp_path / "runs", tmp_path / "results")


def test_report_is_self_contained_with_ranges_margins_and_figures(report: tuple[Path, dict[str, Path]]) -> None:
    out, outputs = report
    page = outputs["report_html"].read_text()
    assert outputs["report_html"] == out / "report.html" and outputs["distributions_png"].is_file()
    assert "data range 4095" in page and "no data range" in page  # psnr/ssim headers; mae_hu has none
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing loaded from elsewhere
    assert page.count('src="data:image/png;base64,') == 2 + 1 + 4  # 2 curves, distributions, 2 runs x 2 splits
    summary = pd.read_csv(outputs["summary"])
    for run in ("a", "b"):
        rows = summary[(summary.run.str.endswith(f"/{run}")) & (summary.split == "test")].set_index("model")
        margin = rows.loc["pix2pix", PSNR] - rows.loc["identity", PSNR]
        assert f"{margin:+.4g} vs identity" in page
    assert "soft tissue, W 400 / L 40 HU" in page


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no headless browser: `make test` installs Debian's chromium (as root), or run "
                "`apt-get install -y --no-install-recommends chromium`")


def _browser(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


@pytest.mark.slow
def test_report_renders_in_headless_chromium(report: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    from matplotlib.image import imread

    out, outputs = report
    url = outputs["report_html"].resolve().as_uri()
    dom = _browser(["--dump-dom", url], tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r'<table id="summary">.*?<tbody>(.*?)</tbody>', dom.stdout, re.S)
    assert body is not None, dom.stdout[:2000]
    assert body.group(1).count("<tr") == len(pd.read_csv(outputs["summary"]))  # every summary row rendered
    assert '<table id="margins">' in dom.stdout
    shot = tmp_path / "shot.png"
    run = _browser([f"--screenshot={shot}", "--window-size=1280,2000", url], tmp_path / "profile")
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    pixels = imread(str(shot))[..., :3]
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 0.05  # not a blank page
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # text, table shading and figures, not one colour
    top = pixels[:600]  # the summary table sits near the top: its header shading (#e8eef5) is there
    header_blue = np.all(np.abs(top - np.array([0xE8, 0xEE, 0xF5]) / 255.0) < 0.01, axis=-1)
    assert header_blue.sum() > 1000
