"""The volume networks have no parameter whose gradient is zero by construction, so a batch split over DDP
ranks trains the same weights as the whole batch in one process; weights of another layout are refused
with the fix."""

from __future__ import annotations

import copy
from typing import Callable

import pytest
import torch
from torch import Tensor, nn

from ctpipe.models.xray2ct_progressive import XRAY2CT_PROGRESSIVE_TINY, XRay2CTProgressive
from ctpipe.models.layout import WeightLayoutError
from ctpipe.models.lift_ct import LIFT_TINY, LiftCT
from ctpipe.models.residual_upsampler3d import RESIDUAL_UPSAMPLER3D_TINY, ResidualUpsampler3D
from ctpipe.models.xray2ct import XRAY2CT_TINY, Attention, XRay2CT64

CONV = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose3d)


def _xrays(batch: int, size: int) -> Tensor:
    return torch.rand(batch, 2, size, size, generator=torch.Generator().manual_seed(1))


NETWORKS: dict[str, tuple[Callable[[], nn.Module], Callable[[int], Tensor]]] = {
    "xray2ct": (lambda: XRay2CT64(XRAY2CT_TINY), lambda b: _xrays(b, XRAY2CT_TINY.xray_size)),
    "xray2ct_progressive": (lambda: XRay2CTProgressive(XRAY2CT_PROGRESSIVE_TINY),
                            lambda b: _xrays(b, XRAY2CT_PROGRESSIVE_TINY.backbone.xray_size)),
    "residual_upsampler3d": (lambda: ResidualUpsampler3D(RESIDUAL_UPSAMPLER3D_TINY),
                             lambda b: torch.rand(b, 1, *(RESIDUAL_UPSAMPLER3D_TINY.input_size,) * 3,
                                                  generator=torch.Generator().manual_seed(1))),
    "lift": (lambda: LiftCT(LIFT_TINY), lambda b: _xrays(b, LIFT_TINY.xray_size)),
}


def _outputs(model: nn.Module, x: Tensor) -> list[Tensor]:
    out = model(x)
    return list(out.values()) if isinstance(out, dict) else [out]


def _mse(model: nn.Module, x: Tensor, targets: list[Tensor]) -> Tensor:
    return sum(torch.nn.functional.mse_loss(o, t) for o, t in zip(_outputs(model, x), targets))  # type: ignore[return-value]


def _adam_steps(model: nn.Module, x: Tensor, targets: list[Tensor], split: bool, steps: int) -> dict[str, Tensor]:
    """``steps`` AdamW steps on the batch as one process computes them, or (``split``) as two DDP ranks of
    one sample each do: the mean of the per-sample gradients."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.05)
    for _ in range(steps):
        opt.zero_grad()
        if not split:
            _mse(model, x, targets).backward()
        else:
            grads = []
            for i in range(x.shape[0]):
                model.zero_grad()
                _mse(model, x[i : i + 1], [t[i : i + 1] for t in targets]).backward()
                grads.append([p.grad.clone() for p in model.parameters()])  # type: ignore[union-attr]
            for p, *per_rank in zip(model.parameters(), *grads):
                p.grad = torch.stack(per_rank).mean(0)
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# (residual_upsampler3d and lift start with zero heads, so nothing upstream of a head gets a gradient at the first steps:
# their Adam runs agree whatever the layout, and the structural test below covers them)
@pytest.mark.parametrize("name", ["xray2ct", "xray2ct_progressive"])
def test_adam_on_a_batch_split_over_two_ranks_trains_the_same_weights(name: str) -> None:
    """Before, the conv biases before a GroupNorm and the key bias drifted by up to 2e-5 (2 lr) in 4 steps."""
    build, inputs = NETWORKS[name]
    torch.manual_seed(0)
    model = build()
    x = inputs(2)
    with torch.no_grad():
        targets = [torch.rand_like(o) for o in _outputs(model, x)]
    whole = _adam_steps(copy.deepcopy(model), x, targets, split=False, steps=4)
    split = _adam_steps(copy.deepcopy(model), x, targets, split=True, steps=4)
    for key, weight in whole.items():
        torch.testing.assert_close(split[key], weight, rtol=0, atol=1e-6, msg=f"{name}: {key}")


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_no_conv_before_a_group_norm_has_a_bias(name: str) -> None:
    model = NETWORKS[name][0]()
    pairs = [(a, b) for seq in model.modules() if isinstance(seq, nn.Sequential) for a, b in zip(seq, list(seq)[1:])]
    before_norm = [a for a, b in pairs if isinstance(a, CONV) and isinstance(b, nn.GroupNorm)]
    assert before_norm and all(conv.bias is None for conv in before_norm)
    assert all(m.k.bias is None for m in model.modules() if isinstance(m, Attention))


def _old_layout(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` as the networks stored it before: one ``kv`` projection with a bias, conv biases before norms."""
    old = {k: v for k, v in state.items() if not k.endswith(("attn.k.weight", "attn.v.weight", "attn.v.bias"))}
    for key in [k for k in state if k.endswith("attn.k.weight")]:
        stem = key[: -len("k.weight")]
        old[stem + "kv.weight"] = torch.cat([state[stem + "k.weight"], state[stem + "v.weight"]])
        old[stem + "kv.bias"] = torch.cat([torch.zeros_like(state[stem + "v.bias"]), state[stem + "v.bias"]])
    old["encoder.cnn.0.net.0.bias"] = torch.zeros(XRAY2CT_TINY.encoder_channels[0])
    return old


def test_a_checkpoint_of_the_old_layout_is_refused_with_the_fix() -> None:
    model = XRay2CT64(XRAY2CT_TINY)
    with pytest.raises(WeightLayoutError, match=r"XRay2CT64: .*kv\.weight.*new --run-dir"):
        model.load_state_dict(_old_layout(model.state_dict()))
    wrapper = nn.ModuleDict({"net": XRay2CT64(XRAY2CT_TINY)})  # the stage's Stage1Net stores it as net.*
    old = {f"net.{k}": v for k, v in _old_layout(model.state_dict()).items()}
    with pytest.raises(WeightLayoutError, match=r"unexpected keys .*net\.encoder\.cnn\.0\.net\.0\.bias"):
        wrapper.load_state_dict(old)
    wrapper.load_state_dict({f"net.{k}": v for k, v in model.state_dict().items()})  # its own layout loads


def test_a_partial_load_is_still_allowed() -> None:
    stage1 = XRay2CT64(XRAY2CT_TINY)
    direct = XRay2CTProgressive(XRAY2CT_PROGRESSIVE_TINY)
    direct.load_stage1_state_dict(stage1.state_dict())
    assert torch.equal(direct.encoder.project.weight, stage1.encoder.project.weight)
    with pytest.raises(WeightLayoutError, match="kv.weight"):
        direct.load_stage1_state_dict(_old_layout(stage1.state_dict()))
