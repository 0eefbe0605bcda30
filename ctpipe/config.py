"""Configuration: frozen dataclasses per stage, loaded from JSON, overridden by ``a.b=c`` arguments.

One source of defaults: each stage's config dataclass holds its canonical settings (those of the source
experiment it follows); a packaged file ``ctpipe/configs/<name>.json`` names its stage and lists only the
settings it changes (``tests/test_config_sources.py`` fails when a file restates a default).

Unknown keys and wrong types fail with a message that lists the valid keys / the expected type.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar, Union, get_args, get_origin, get_type_hints

from ctpipe.errors import ConfigError
from ctpipe.schedule_checks import check_schedule_lengths

__all__ = ["ConfigError", "DataConfig", "OptimConfig", "SchedulerConfig", "TrainConfig", "apply_overrides",
           "build_config", "check_counts", "from_dict", "load_json", "to_dict"]

T = TypeVar("T")


# ---- shared building blocks ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DataConfig:
    root: str = "data/lodopab/shards"
    train_split: str = "train"
    val_split: str = "validation"
    test_split: str = "test"
    batch_size: int = 8
    eval_batch_size: int = 8
    num_workers: int = 0


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    name: Literal["plateau", "cosine", "onecycle", "linear_decay", "none"] = "plateau"
    factor: float = 0.5          # plateau
    patience: int = 2            # plateau
    min_lr: float = 0.0          # plateau / cosine
    n_epochs_constant: int = 0   # linear_decay: epochs at the initial lr, then linear decay to 0
    pct_start: float = 0.3       # onecycle


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    seed: int = 0
    monitor: str = "val_loss"
    monitor_mode: Literal["min", "max"] = "min"
    early_stopping_patience: int | None = 4
    val_every: int = 1
    checkpoint_every: int = 0            # also keep epoch_NNN.pt every N epochs (0 = never)
    checkpoint_interval_s: float = 600.0  # time-based 'latest' save (bounds what a SIGKILL loses)
    segment_epochs: int | None = None     # stop cleanly after this many epochs per invocation
    grad_clip: float | None = None
    grad_accum: int = 1
    amp: Literal["none", "bf16", "fp16"] = "none"
    log_every: int = 50
    log_interval_s: float = 30.0          # also log a step/evaluation line (rate, ETA) at least this often
    compile: bool = False
    gradient_checkpointing: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_steps_per_epoch: int | None = None
    deterministic: bool = False           # torch deterministic algorithms + cuBLAS workspace (see README)
    tensorboard: bool = False             # scalars + example images to run_dir/tb/ (extra: ctpipe[tensorboard])


# ---- generic (de)serialisation ---------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp) or dataclasses.is_dataclass(origin):  # plain, or generic such as Choice[Net]
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected an object with keys {_field_names(origin or tp)}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        if len(errors) == 1:  # an optional section (X | None): X's own error says what is wrong
            raise ConfigError(errors[0])
        raise ConfigError(f"{where}: {value!r} matches none of {[_type_name(o) for o in options]}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (tuple, list, Sequence, typing.Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected an object, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported config type {tp!r}")  # pragma: no cover - programming error


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _bind(tp: Any, bindings: Mapping[Any, Any]) -> Any:
    """``tp`` with the type variables of a generic dataclass replaced by the arguments it was used with."""
    if isinstance(tp, TypeVar):
        return bindings.get(tp, tp)
    parameters = getattr(tp, "__parameters__", ())
    return tp[tuple(bindings.get(p, p) for p in parameters)] if parameters else tp


def _field_types(cls: Any) -> tuple[type, dict[str, Any]]:
    """The dataclass behind ``cls`` and its field types; a generic alias (``Choice[Net]``) binds its arguments."""
    origin = get_origin(cls)
    if origin is None:
        return cls, get_type_hints(cls)
    bindings = dict(zip(origin.__parameters__, get_args(cls)))
    return origin, {name: _bind(tp, bindings) for name, tp in get_type_hints(origin).items()}


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build the frozen dataclass ``cls`` (or a generic one with its arguments, ``Choice[Net]``) from ``data``;
    unknown keys and wrong types raise ConfigError."""
    cls, hints = _field_types(cls)
    names = _field_names(cls)
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {names}")
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name in data:
            value = data[field.name]
            default = field.default
            if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
                # a partial section keeps this stage's own defaults for the keys it leaves out
                value = {**to_dict(default), **value}
            kwargs[field.name] = _coerce(value, hints[field.name], f"{where}.{field.name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key {field.name!r}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as err:  # a config class's own check (__post_init__) of values that do not fit together
        raise ConfigError(f"{where}: {err}") from err


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain JSON-ready dict of a (nested) config dataclass; tuples become lists."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value

    return plain(obj)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare string such as adamw or a/path


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str], where: str = "override") -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as JSON, else taken as strings) to a nested dict."""
    result = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{where} {item!r}: expected key.sub=value (for example optim.lr=3e-4)")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = result
        for i, part in enumerate(parts[:-1]):
            child = node.get(part) if isinstance(node, dict) else None
            if child is None:
                child = {}
                node[part] = child
            if not isinstance(child, dict):
                raise ConfigError(f"{where} {item!r}: {'.'.join(parts[: i + 1])} is not a section")
            node = child
        node[parts[-1]] = _parse_value(text)
    return result


def load_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; pass an existing JSON file") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder; pass a JSON file, e.g. {path}/<stage>.json") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} cannot be read ({err}); pass a readable JSON file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"config file {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be an object")
    return data


def build_config(cls: type[T], data: Mapping[str, Any], overrides: Sequence[str] = (), where: str = "config") -> T:
    """Merge overrides into ``data`` and validate it as ``cls`` (counts and schedule lengths included)."""
    config = from_dict(cls, apply_overrides(data, overrides), where)
    check_counts(config, where)
    check_schedule_lengths(config, where)
    return config


# integer settings that count something and must be at least 1 (batch sizes by their suffix)
_AT_LEAST_ONE = frozenset({"grad_accum", "val_every", "log_every", "max_steps_per_epoch"})
_AT_LEAST_ZERO = frozenset({"epochs", "num_workers", "checkpoint_every", "segment_epochs", "early_stopping_patience"})


def check_counts(config: Any, where: str = "config", prefix: str = "") -> None:
    """Refuse a zero/negative batch size, epoch count, ... anywhere in a config, naming the key."""
    for f in dataclasses.fields(config):
        value, key = getattr(config, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_counts(value, where, f"{key}.")
        elif isinstance(value, bool) or not isinstance(value, int):
            continue
        elif (f.name.endswith("batch_size") or f.name in _AT_LEAST_ONE) and value < 1:
            raise ConfigError(f"{where}: {key}={value} must be at least 1; set {key}=1 or more")
        elif f.name in _AT_LEAST_ZERO and value < 0:
            raise ConfigError(f"{where}: {key}={value} must not be negative; set {key}=0 or more")
