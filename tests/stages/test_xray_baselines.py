"""mean_volume and nearest_xray against hand computations on a real (small) DRR shard set, scored by the
evaluation writer the models use."""

from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from ctpipe.data.datasets import load_splits
from ctpipe.data.drr_prep import prep_drr
from ctpipe.data.shards import read_manifest
from ctpipe.data.synthetic_ct import write_synthetic_ct
from ctpipe.report import add_baseline_margin
from ctpipe.stages.base import score_samples, write_split
from ctpipe.stages.xray2ct_common import XRayDataConfig
from ctpipe.stages.xray2ct_evaluation import nearest_xray_indices, training_reference, with_baselines, xray_evaluation


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("ct")
    write_synthetic_ct(raw, 10, size=16, spacing_mm=20.0, seed=3)
    out = tmp_path_factory.mktemp("shards")
    prep_drr(raw, out, xray_size=16, volume_sizes=(12, 16), split_fractions=(0.6, 0.2, 0.2))
    return out


def read_by_hand(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """{patient: {field: array}} straight from the HDF5 shards."""
    out = {}
    for shard in sorted(root.glob("shard-*.h5")):
        with h5py.File(shard, "r") as handle:
            ids = [p.decode() if isinstance(p, bytes) else str(p) for p in handle["patient_id"][:]]
            for row, patient in enumerate(ids):
                out[patient] = {f: handle[f][row].astype(np.float64) for f in ("xray", "volume_12", "volume_16")}
    return out


def test_baselines_match_a_hand_computation(shards: Path, tmp_path: Path) -> None:
    manifest = read_manifest(shards)
    assert manifest.splits["train"] and manifest.splits["validation"] and manifest.splits["test"]
    samples = read_by_hand(shards)
    train = sorted(manifest.splits["train"])
    cfg = XRayDataConfig(root=str(shards), volume_field="volume_12", high_field="volume_16")

    reference = training_reference(cfg, ["volume_12", "volume_16"])
    for field in ("volume_12", "volume_16"):
        mean = np.mean([samples[p][field] for p in train], axis=0)
        assert np.allclose(reference.means[field][0, 0].numpy(), mean, atol=1e-6)

    models = {  # "models" predicting 0.25 everywhere, scored beside the baselines on two grids
        "constant": lambda batch: torch.full_like(batch["volume_12"], 0.25),
        "constant_hi": lambda batch: torch.full_like(batch["volume_16"], 0.25)}

    predictors, targets = with_baselines(models, {"constant": "volume_12", "constant_hi": "volume_16"}, cfg, "volume_12",
                                         torch.device("cpu"))
    assert targets == {"constant": "volume_12", "constant_hi": "volume_16", "mean_volume": "volume_12", "nearest_xray": "volume_12",
                       "mean_volume_16": "volume_16", "nearest_xray_16": "volume_16"}
    _, val_set, test_set = load_splits(cfg, ["xray", "volume_12", "volume_16"])
    for split, dataset in (("validation", val_set), ("test", test_set)):
        # the stages' X-ray evaluation: its targets, metric and columns (eval_size read from the shard set)
        evaluation = xray_evaluation(lambda c, t: {"constant": "volume_12", "constant_hi": "volume_16"},
                                     lambda c: c.data.volume_field)
        run_cfg = SimpleNamespace(data=cfg)
        assert {name: evaluation.target(run_cfg, None, name) for name in predictors} == targets
        scores = score_samples(predictors, targets, evaluation.metric(run_cfg), dataset, torch.device("cpu"), 2, 2,
                               split, evaluation.columns(run_cfg, None))
        frames = write_split(scores, tmp_path / split, {name: "baseline" for name in predictors})
        for patient in manifest.splits[split]:
            sample = samples[patient]
            distances = [np.sum((sample["xray"] - samples[p]["xray"]) ** 2) for p in train]
            nearest = train[int(np.argmin(distances))]
            for name, field, prediction in (
                ("mean_volume", "volume_12", np.mean([samples[p]["volume_12"] for p in train], axis=0)),
                ("mean_volume_16", "volume_16", np.mean([samples[p]["volume_16"] for p in train], axis=0)),
                ("nearest_xray", "volume_12", samples[nearest]["volume_12"]),
                ("nearest_xray_16", "volume_16", samples[nearest]["volume_16"]),
            ):
                row = frames[name].set_index("patient_id").loc[patient]
                mse = np.mean((np.clip(prediction, 0, 1) - sample[field]) ** 2)
                assert row["psnr[range=1]"] == pytest.approx(10 * np.log10(1 / mse), abs=1e-4), (name, patient)
                assert row["eval_size"] == int(field.split("_")[1])
                assert np.isfinite(row["psnr[x2ct:0-2500,max=4095]"])
        assert (tmp_path / split / "mean_volume.csv").is_file() and (tmp_path / split / "nearest_xray_16.csv").is_file()


def test_nearest_xray_picks_the_closest_training_patient(shards: Path) -> None:
    cfg = XRayDataConfig(root=str(shards), volume_field="volume_12")
    reference = training_reference(cfg, ["volume_12"])
    train_xrays = reference.xrays.reshape(-1, 2, 16, 16)
    # a training patient's own X-rays (slightly perturbed) must find that patient
    query = train_xrays[[2, 0]] + 1e-4
    assert nearest_xray_indices(reference, query).tolist() == [2, 0]


def test_margin_over_the_best_baseline_per_run_split_and_grid() -> None:
    summary = pd.DataFrame({
        "run": ["r"] * 5, "stage": ["stage1_64"] * 5,
        "experiment": ["lift", "baseline", "baseline", "baseline", "lift"],
        "model": ["stage1_64", "mean_volume", "nearest_xray", "mean_volume_16", "stage1_64"],
        "split": ["test", "test", "test", "test", "validation"],
        "eval_size": [12, 12, 12, 16, 12], "psnr[range=1]": [35.0, 28.0, 31.5, 27.0, 33.0]})
    out = add_baseline_margin(summary)
    margin = out["margin_over_best_baseline[psnr[range=1]]"]
    assert out.best_baseline.tolist()[:4] == ["nearest_xray", "nearest_xray", "nearest_xray", "mean_volume_16"]
    assert margin.tolist()[:4] == pytest.approx([3.5, -3.5, 0.0, 0.0])
    assert np.isnan(margin.iloc[4]) and out.best_baseline.iloc[4] == ""  # no baseline on that split: no margin
