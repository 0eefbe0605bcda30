"""VGGFeatures: local weights only, exact loading, frozen, clear message when the file is missing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ctpipe.models.vgg_features import (
    ENV_VAR,
    VGG16_FILE_NAME,
    VGGFeatures,
    resolve_vgg16_weights,
    write_random_vgg16_weights,
)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_vgg16_weights(tmp_path_factory.mktemp("vgg") / VGG16_FILE_NAME, layer="relu3_3")


def test_missing_weights_message_names_file_url_and_env(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError) as err:
        VGGFeatures()
    message = str(err.value)
    assert VGG16_FILE_NAME in message and ENV_VAR in message
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in message
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match="nowhere.pth' does not exist"):
        VGGFeatures(missing)
    monkeypatch.setenv(ENV_VAR, str(missing))
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        resolve_vgg16_weights()


def test_env_var_is_used(monkeypatch, weights_file: Path) -> None:
    monkeypatch.setenv(ENV_VAR, str(weights_file))
    assert resolve_vgg16_weights() == weights_file
    assert VGGFeatures(layer="relu1_2").features[0].weight.shape == (64, 3, 3, 3)


def test_loaded_weights_are_the_files_and_frozen(weights_file: Path) -> None:
    model = VGGFeatures(weights_file, layer="relu2_2")
    state = torch.load(weights_file, weights_only=True)
    assert torch.equal(model.features[7].weight, state["features.7.weight"])
    assert len(model.features) == 9
    assert all(not p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))


def test_forward_matches_manual_normalisation(weights_file: Path) -> None:
    model = VGGFeatures(weights_file, layer="relu1_2", data_range=2.0)
    x = torch.rand(2, 1, 20, 24) * 2.0
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    rgb = ((x / 2.0).repeat(1, 3, 1, 1) - mean) / std
    conv0, conv2 = model.features[0], model.features[2]
    manual = F.relu(conv2(F.relu(conv0(rgb))))
    assert torch.allclose(model(x), manual, atol=1e-5)
    assert model(x).shape == (2, 64, 20, 24)
    assert VGGFeatures(weights_file, layer="relu3_3")(x).shape == (2, 256, 5, 6)


def test_incomplete_weights_file_is_rejected(tmp_path: Path) -> None:
    short = write_random_vgg16_weights(tmp_path / "short.pth", layer="relu1_2")
    with pytest.raises(ValueError, match="relu2_2"):
        VGGFeatures(short, layer="relu2_2")
    with pytest.raises(ValueError, match="layer"):
        VGGFeatures(short, layer="relu5_3")
