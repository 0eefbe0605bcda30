import dataclasses

import pytest
import torch

from ctpipe.models.memory import estimate_memory, saved_activation_bytes
from ctpipe.models.residual_upsampler3d import RESIDUAL_UPSAMPLER3D_TINY, ResidualUpsampler3D, ResidualUpsampler3DConfig
from ctpipe.models.xray2ct_progressive import XRAY2CT_PROGRESSIVE_TINY, XRay2CTProgressive, XRay2CTProgressiveConfig


def test_meta_estimate_equals_a_real_cpu_forward():
    torch.manual_seed(0)
    real = saved_activation_bytes(ResidualUpsampler3D(RESIDUAL_UPSAMPLER3D_TINY), torch.rand(2, 1, 8, 8, 8))
    assert estimate_memory(RESIDUAL_UPSAMPLER3D_TINY, batch_size=2)["activation_bytes"] == real
    # with attention: meta runs the math SDPA path (keeps attention probabilities), CPU/CUDA a fused
    # kernel, so the estimate is an upper bound there
    real = saved_activation_bytes(XRay2CTProgressive(XRAY2CT_PROGRESSIVE_TINY), torch.rand(3, 2, 32, 32))
    assert real <= estimate_memory(XRAY2CT_PROGRESSIVE_TINY, batch_size=3)["activation_bytes"] <= 1.25 * real


def test_activations_dominated_by_the_largest_tensors():
    # ResidualUpsampler3D at the tiny size saves at least the 4x-scale features: (B, c4, 32^3) floats several times
    estimate = estimate_memory(RESIDUAL_UPSAMPLER3D_TINY, batch_size=1)
    assert estimate["activation_bytes"] > 3 * 4 * 32**3 * 4
    assert estimate["parameter_bytes"] == 4 * estimate["parameters"]
    assert estimate["total_bytes"] == sum(v for k, v in estimate.items() if k.endswith("_bytes") and k != "total_bytes")


def test_batch_amp_and_checkpointing_scale_the_estimate():
    base = estimate_memory(XRAY2CT_PROGRESSIVE_TINY, 1)["activation_bytes"]
    assert estimate_memory(XRAY2CT_PROGRESSIVE_TINY, 2)["activation_bytes"] == 2 * base
    tiny = RESIDUAL_UPSAMPLER3D_TINY
    assert estimate_memory(tiny, 1, amp=True)["activation_bytes"] * 2 == estimate_memory(tiny, 1)["activation_bytes"]
    assert 0.45 * base < estimate_memory(XRAY2CT_PROGRESSIVE_TINY, 1, amp=True)["activation_bytes"] < 0.65 * base
    checkpointed = dataclasses.replace(XRAY2CT_PROGRESSIVE_TINY, gradient_checkpointing=True)
    assert estimate_memory(checkpointed, 1)["activation_bytes"] < base / 2


def test_full_size_models_are_estimated_without_allocating():
    for config in (ResidualUpsampler3DConfig(), XRay2CTProgressiveConfig()):
        estimate = estimate_memory(config, batch_size=1, amp=True)
        assert estimate["activation_bytes"] > 2**30  # 256^3 activations: gigabytes


def test_unknown_config_type_is_refused():
    with pytest.raises(TypeError, match="no model for config type"):
        estimate_memory(object(), 1)  # type: ignore[arg-type]


def test_checkpointing_rows_include_the_largest_recomputed_segment():
    config = dataclasses.replace(RESIDUAL_UPSAMPLER3D_TINY, gradient_checkpointing=True)
    estimate = estimate_memory(config, batch_size=2)
    # independently: each checkpointed segment of the real model on CPU, fed its real input
    torch.manual_seed(0)
    model, x = ResidualUpsampler3D(RESIDUAL_UPSAMPLER3D_TINY), torch.rand(2, 1, 8, 8, 8)
    segments = []
    f = model.stem(x).detach()
    for stage in [*model.blocks1, model.up2, *model.blocks2, model.up4, *model.blocks4]:
        segments.append(saved_activation_bytes(stage, f))
        f = stage(f).detach()
    assert estimate["recompute_bytes"] == max(segments) > 0
    assert estimate["total_bytes"] == sum(v for k, v in estimate.items() if k.endswith("_bytes") and k != "total_bytes")
    assert estimate_memory(RESIDUAL_UPSAMPLER3D_TINY, batch_size=2)["recompute_bytes"] == 0
    direct = estimate_memory(dataclasses.replace(XRAY2CT_PROGRESSIVE_TINY, gradient_checkpointing=True), 1)
    assert direct["recompute_bytes"] > 0
