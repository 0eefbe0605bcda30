"""A clear error when weights of another layout are loaded into a volume network.

The convolutions directly followed by a GroupNorm carry no bias, and the attention layers have no key
bias (separate ``k`` / ``v`` projections instead of one ``kv``). The softmax removes any shift of a
query's logits and a GroupNorm with one channel per group any shift of its channel, so those gradients
were exactly zero, and Adam turned their rounding noise into learning-rate-sized steps (a 2-rank DDP run
and a 1-rank run of the same global batch drifted apart by up to 9e-3). With several channels per group
only the group mean of the biases is redundant; they are dropped there too, as is usual before a norm.
Checkpoints written before that change hold those keys; torch's own "Unexpected key(s)" error does not
say what to do about it.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ctpipe.errors import UserError


class WeightLayoutError(UserError, ValueError):
    """A state dict whose keys do not fit the network it is loaded into."""


def refuse_foreign_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_rest: Any) -> None:
    """``load_state_dict`` pre-hook: raise :class:`WeightLayoutError` for keys the network does not have,
    naming them and the fix. (Missing keys are left to torch: a partial load with ``strict=False`` is fine.)"""
    own = set(module.state_dict(prefix=prefix))
    unexpected = sorted(key for key in state_dict if key.startswith(prefix) and key not in own)
    if not unexpected:
        return
    shown = ", ".join(unexpected[:4]) + (f" ... ({len(unexpected)} keys)" if len(unexpected) > 4 else "")
    raise WeightLayoutError(
        f"{type(module).__name__}: the weights loaded do not fit this network (unexpected keys {shown}). Weights "
        "of a different model config do not fit, and neither do checkpoints written before ctpipe dropped the "
        "biases of convolutions followed by a GroupNorm and the attention key bias (keys '...kv.weight' or a "
        "conv '.bias' before a norm): train that stage again into a new --run-dir, or use the ctpipe version "
        "that wrote the checkpoint")


def guard_layout(module: nn.Module) -> None:
    """Check every ``module.load_state_dict`` with :func:`refuse_foreign_keys`."""
    module.register_load_state_dict_pre_hook(refuse_foreign_keys)
