"""Training-memory estimates for the volume networks, without allocating the memory.

:func:`estimate_memory` builds the model and a batch on PyTorch's ``meta`` device (shapes only, no
storage), runs one forward pass under :func:`torch.autograd.graph.saved_tensors_hooks` and adds up
the bytes of every tensor autograd saves for the backward pass (parameters excluded). With gradient
checkpointing the checkpointed segments save only their inputs, so ``activation_bytes`` drops
accordingly; during backward each segment is recomputed and holds its own saved tensors until its
backward is done, one segment at a time: ``recompute_bytes`` is the largest segment's (measured by
running the same model without checkpointing and hooking each segment), and it is part of the total.

Approximations: on ``meta`` scaled_dot_product_attention takes the math path, which keeps the
attention probabilities, where CPU/CUDA run a fused kernel that keeps only its output and
log-sum-exp: the attention part is an upper bound (small next to the 256^3 convolutions). With ``amp=True`` every activation is counted at 2 bytes (under real autocast a few
ops such as norms and softmax keep float32); tensors saved twice by different ops are counted twice
(an upper bound); the CUDA context, cuDNN workspaces and allocator fragmentation are not included.
Parameter memory assumes float32 weights, float32 gradients and Adam's two float32 moments.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Union

import torch
from torch import Tensor, nn

from ctpipe.models.residual_upsampler3d import ResidualUpsampler3D, ResidualUpsampler3DConfig
from ctpipe.models.xray2ct import XRay2CT64, XRay2CTConfig
from ctpipe.models.xray2ct_progressive import XRay2CTProgressive, XRay2CTProgressiveConfig

ModelConfig = Union[XRay2CTConfig, ResidualUpsampler3DConfig, XRay2CTProgressiveConfig]


@dataclass(frozen=True)
class _Builder:
    model: Callable[[ModelConfig], nn.Module]
    input_shape: Callable[[ModelConfig, int], tuple[int, ...]]
    segments: Callable[[nn.Module], list[nn.Module]]  # what gradient checkpointing wraps, one call each


def _xray_shape(config: XRay2CTConfig, batch: int) -> tuple[int, ...]:
    return (batch, config.n_views, config.xray_size, config.xray_size)


def _xray2ct_segments(model: nn.Module) -> list[nn.Module]:
    return list(model.transformer.blocks)  # type: ignore[union-attr,arg-type]


def _direct_segments(model: nn.Module) -> list[nn.Module]:
    return [*model.transformer.blocks, *model.stages]  # type: ignore[union-attr,misc]


def _refine_segments(model: nn.Module) -> list[nn.Module]:
    return [*model.blocks1, model.up2, *model.blocks2, model.up4, *model.blocks4]  # type: ignore[union-attr,misc]


_BUILDERS: dict[type, _Builder] = {
    XRay2CTConfig: _Builder(XRay2CT64, _xray_shape, _xray2ct_segments),  # type: ignore[arg-type]
    XRay2CTProgressiveConfig: _Builder(XRay2CTProgressive, lambda c, b: _xray_shape(c.backbone, b), _direct_segments),  # type: ignore[arg-type,attr-defined]
    ResidualUpsampler3DConfig: _Builder(ResidualUpsampler3D, lambda c, b: (b, 1, c.input_size, c.input_size, c.input_size),  # type: ignore[arg-type,attr-defined]
                              _refine_segments),
}


def saved_activation_bytes(model: nn.Module, inputs: Tensor) -> int:
    """Bytes autograd saves for backward during ``model(inputs)`` (parameters and their views excluded)."""
    parameters = {id(p) for p in model.parameters()}
    total = 0

    def pack(tensor: Tensor) -> Tensor:
        nonlocal total
        base = tensor._base if tensor._base is not None else tensor
        if id(tensor) not in parameters and id(base) not in parameters:
            total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(inputs)
    return total


def largest_segment_bytes(model: nn.Module, inputs: Tensor, segments: list[nn.Module]) -> int:
    """Bytes the largest of ``segments`` saves for backward during ``model(inputs)`` (run WITHOUT
    checkpointing): what backward holds while it recomputes that segment under checkpointing."""
    parameters = {id(p) for p in model.parameters()}
    running = [0]
    starts: dict[int, int] = {}
    largest = [0]

    def pack(tensor: Tensor) -> Tensor:
        base = tensor._base if tensor._base is not None else tensor
        if id(tensor) not in parameters and id(base) not in parameters:
            running[0] += tensor.numel() * tensor.element_size()
        return tensor

    def before(module: nn.Module, _args: object) -> None:
        starts[id(module)] = running[0]

    def after(module: nn.Module, _args: object, _out: object) -> None:
        largest[0] = max(largest[0], running[0] - starts.pop(id(module)))

    handles = [h for m in segments for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return largest[0]


def estimate_memory(config: ModelConfig, batch_size: int = 1, amp: bool = False) -> dict[str, int]:
    """Training-memory estimate in bytes for one step of the model that ``config`` describes.

    Returns ``parameters`` (count), ``parameter_bytes``, ``gradient_bytes``, ``optimizer_bytes``
    (Adam), ``activation_bytes`` (saved for backward), ``recompute_bytes`` (gradient checkpointing: the
    largest segment recomputed during backward; 0 without) and ``total_bytes`` (their sum).
    """
    builder = _BUILDERS.get(type(config))
    if builder is None:
        raise TypeError(f"estimate_memory: no model for config type {type(config).__name__}; "
                        f"known: {sorted(t.__name__ for t in _BUILDERS)}")
    if batch_size < 1:
        raise ValueError(f"estimate_memory: batch_size must be >= 1, got {batch_size}")
    dtype = torch.float16 if amp else torch.float32
    with torch.device("meta"):
        model = builder.model(config).to(dtype).train()
        inputs = torch.empty(builder.input_shape(config, batch_size), dtype=dtype)
    n_params = sum(p.numel() for p in model.parameters())
    activations = saved_activation_bytes(model, inputs)
    recompute = 0
    if getattr(config, "gradient_checkpointing", False):
        with torch.device("meta"):
            plain = builder.model(dataclasses.replace(config, gradient_checkpointing=False)).to(dtype).train()
        recompute = largest_segment_bytes(plain, inputs, builder.segments(plain))
    result = {
        "parameters": n_params,
        "parameter_bytes": 4 * n_params,
        "gradient_bytes": 4 * n_params,
        "optimizer_bytes": 8 * n_params,
        "activation_bytes": activations,
        "recompute_bytes": recompute,
    }
    result["total_bytes"] = sum(v for k, v in result.items() if k.endswith("_bytes"))
    return result
