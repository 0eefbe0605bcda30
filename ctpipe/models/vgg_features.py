"""Frozen VGG16 feature extractor for perceptual losses, loaded from a LOCAL weights file.

Nothing is downloaded: the ImageNet weights are torchvision's ``vgg16-397923af.pth`` state dict
(528 MB), given as an argument or through the environment variable ``CTPIPE_VGG16_WEIGHTS``.
Only the ``features.*`` entries up to the chosen layer are used (the classifier is ignored and
never allocated: the network is built on the ``meta`` device and the loaded tensors are assigned).

Inputs are grayscale (or RGB) images in ``[0, data_range]``: they are scaled to ``[0, 1]``,
repeated to 3 channels and normalised with the ImageNet mean / std that VGG16 was trained with.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from ctpipe._torchvision_compat import import_torchvision
from ctpipe.atomic import atomic_path

__all__ = [
    "ENV_VAR",
    "VGG16_FILE_NAME",
    "VGG16_URL",
    "VGG_LAYERS",
    "VGGFeatures",
    "resolve_vgg16_weights",
    "write_random_vgg16_weights",
]

ENV_VAR = "CTPIPE_VGG16_WEIGHTS"
VGG16_FILE_NAME = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILE_NAME}"
VGG_LAYERS: dict[str, int] = {  # layer name -> number of ``features`` modules kept (ends at that ReLU)
    "relu1_2": 4,
    "relu2_2": 9,
    "relu3_3": 16,
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _missing_weights_message(reason: str) -> str:
    return (
        f"{reason}. The perceptual (VGG) loss needs torchvision's ImageNet VGG16 state dict "
        f"'{VGG16_FILE_NAME}' (528 MB) as a local file; ctpipe never downloads it. On a machine "
        f"with internet run `curl -LO {VGG16_URL}` (or `python -c \"import torchvision; "
        "torchvision.models.vgg16(weights='IMAGENET1K_V1')\"`, which leaves it in "
        f"~/.cache/torch/hub/checkpoints/), copy it to the cluster and set {ENV_VAR}=/path/to/"
        f"{VGG16_FILE_NAME} (or pass vgg_weights_path in the loss config). Or set the "
        "perceptual loss weight to 0."
    )


def resolve_vgg16_weights(path: str | os.PathLike[str] | None = None) -> Path:
    """The weights file: ``path`` if given, else ``$CTPIPE_VGG16_WEIGHTS``; it must exist."""
    if path is None:
        env = os.environ.get(ENV_VAR)
        if not env:
            reason = f"No VGG16 weights given and {ENV_VAR} is not set"
            raise FileNotFoundError(_missing_weights_message(reason))
        path = env
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(_missing_weights_message(f"VGG16 weights file '{resolved}' does not exist"))
    return resolved


def _features_state(path: Path, n_modules: int) -> dict[str, Tensor]:
    """The ``features.<i>.*`` tensors with ``i < n_modules``, keys renamed to ``<i>.*``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(
            f"'{path}' is not a state dict (got {type(state).__name__}); expected {VGG16_FILE_NAME}"
        )
    kept: dict[str, Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "features" and int(parts[1]) < n_modules:
            kept[f"{parts[1]}.{parts[2]}"] = value
    return kept


def write_random_vgg16_weights(
    path: str | os.PathLike[str], layer: str = "relu3_3", seed: int = 0
) -> Path:
    """Write a RANDOM (He-initialised) VGG16 ``features.*`` state dict up to ``layer`` to ``path``.

    Same keys and shapes as torchvision's file, for tests and smoke runs of the perceptual loss
    where the real ImageNet weights are not available. Never use it for real training.
    """
    if layer not in VGG_LAYERS:
        raise ValueError(f"layer={layer!r} is not one of {sorted(VGG_LAYERS)}")
    tv = import_torchvision()
    with torch.device("meta"):
        features = tv.models.vgg16(weights=None).features[: VGG_LAYERS[layer]]
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    for index, module in enumerate(features):
        if isinstance(module, nn.Conv2d):
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            weight = torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5
            state[f"features.{index}.weight"] = weight
            state[f"features.{index}.bias"] = torch.zeros(module.out_channels)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


class VGGFeatures(nn.Module):
    """VGG16 truncated at ``layer`` (relu1_2 | relu2_2 | relu3_3), frozen and always in eval mode."""

    def __init__(
        self,
        weights_path: str | os.PathLike[str] | None = None,
        layer: str = "relu2_2",
        data_range: float = 1.0,
    ) -> None:
        super().__init__()
        if layer not in VGG_LAYERS:
            raise ValueError(f"layer={layer!r} is not one of {sorted(VGG_LAYERS)}")
        if not data_range > 0:
            raise ValueError(f"data_range must be > 0, got {data_range}")
        path = resolve_vgg16_weights(weights_path)
        n_modules = VGG_LAYERS[layer]
        tv = import_torchvision()
        with torch.device("meta"):
            full = tv.models.vgg16(weights=None)
        features = full.features[:n_modules]
        state = _features_state(path, n_modules)
        try:
            features.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as err:
            raise ValueError(
                f"'{path}' does not hold the VGG16 feature weights up to {layer} "
                f"(expected torchvision's {VGG16_FILE_NAME} state dict): {err}"
            ) from err
        self.layer = layer
        self.data_range = float(data_range)
        self.features = features
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "VGGFeatures":
        """Stays in eval mode whatever the caller asks (it is a fixed feature extractor)."""
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 1 | 3, H, W)`` in ``[0, data_range]`` -> features ``(B, C_l, H / s, W / s)``."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"VGGFeatures expects (B, 1 or 3, H, W), got {tuple(x.shape)}")
        x = x / self.data_range
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.features((x - self.mean) / self.std)
