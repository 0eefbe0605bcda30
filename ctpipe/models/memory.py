"""Training-memory estimates for the volume networks, without allocating the memory.

:func:`estimate_memory` builds the model and a batch on PyTorch's ``meta`` device (shapes only, no
storage), runs one forward pass under :func:`torch.autograd.graph.saved_tensors_hooks` and adds up
the bytes of every tensor autograd saves for the backward pass (parameters excluded). With gradient
checkpointing the checkpointed segments save only their inputs, so the estimate drops accordingly;
the transient recomputation of one segment during backward is *not* included.

Approximations: on ``meta`` scaled_dot_product_attention takes the math path, which keeps the
attention probabilities, where CPU/CUDA run a fused kernel that keeps only its output and
log-sum-exp: the attention part is an upper bound (small next to the 256^3 convolutions). With ``amp=True`` every activation is counted at 2 bytes (under real autocast a few
ops such as norms and softmax keep float32); tensors saved twice by different ops are counted twice
(an upper bound); the CUDA context, cuDNN workspaces and allocator fragmentation are not included.
Parameter memory assumes float32 weights, float32 gradients and Adam's two float32 moments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import torch
from torch import Tensor, nn

from ctpipe.models.direct256 import Direct256, Direct256Config
from ctpipe.models.refine256 import Refine256, Refine256Config
from ctpipe.models.xray2ct import XRay2CT64, XRay2CTConfig

ModelConfig = Union[XRay2CTConfig, Refine256Config, Direct256Config]


@dataclass(frozen=True)
class _Builder:
    model: Callable[[ModelConfig], nn.Module]
    input_shape: Callable[[ModelConfig, int], tuple[int, ...]]


def _xray_shape(config: XRay2CTConfig, batch: int) -> tuple[int, ...]:
    return (batch, config.n_views, config.xray_size, config.xray_size)


_BUILDERS: dict[type, _Builder] = {
    XRay2CTConfig: _Builder(XRay2CT64, _xray_shape),  # type: ignore[arg-type]
    Direct256Config: _Builder(Direct256, lambda c, b: _xray_shape(c.backbone, b)),  # type: ignore[arg-type,attr-defined]
    Refine256Config: _Builder(Refine256, lambda c, b: (b, 1, c.input_size, c.input_size, c.input_size)),  # type: ignore[arg-type,attr-defined]
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


def estimate_memory(config: ModelConfig, batch_size: int = 1, amp: bool = False) -> dict[str, int]:
    """Training-memory estimate in bytes for one step of the model that ``config`` describes.

    Returns ``parameters`` (count), ``parameter_bytes``, ``gradient_bytes``, ``optimizer_bytes``
    (Adam), ``activation_bytes`` (saved for backward) and ``total_bytes`` (their sum).
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
    result = {
        "parameters": n_params,
        "parameter_bytes": 4 * n_params,
        "gradient_bytes": 4 * n_params,
        "optimizer_bytes": 8 * n_params,
        "activation_bytes": activations,
    }
    result["total_bytes"] = sum(v for k, v in result.items() if k.endswith("_bytes"))
    return result
