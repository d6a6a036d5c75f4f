"""The typed training config: nested dataclasses filled from YAML, then `key.sub=value` overrides.

Rules (nanoGPT's, without its exec): every key must exist in the dataclasses (a misspelt one is an
error that names the nearest valid key), every value must have the declared type (ints pass as
floats, lists as tuples), and each section validates its values. A config file may start from
another with `base: other.yaml` (a path relative to the file); its keys then override the base's.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipelines.spec import DataConfig

COMPILE_MODES = ("auto", "default", "max-autotune", "reduce-overhead")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, key and value."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float (YAML 1.1 insists on `1.0e-4`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_value(text: str):
    """A CLI override's value, read as YAML: `0.1` -> float, `[30, 60]` -> list, `null` -> None."""
    return yaml.load(text, Loader=_Loader)


@dataclass
class ModelConfig:
    name: str = "resnet20"
    shortcut: str | None = None  # None = the family's default (models.build_model)
    zero_init_residual: bool = False
    stride_in_1x1: bool = True  # paper bottlenecks; False = torchvision's stride on the 3x3


@dataclass
class OptimConfig:
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False

    def __post_init__(self):
        for key in ("lr", "momentum", "weight_decay"):
            if getattr(self, key) < 0:
                raise ValueError(f"optim.{key}={getattr(self, key)!r}: must be >= 0")


@dataclass
class ScheduleConfig:
    """How long to train and how the learning rate moves.

    `unit` ("iter" or "epoch") is the unit of total, milestones and warmup, and how often the
    scheduler steps. kind "multistep": lr x gamma at each milestone (no milestones = constant);
    kind "plateau": lr x gamma when the val error has not improved for plateau_patience evals
    (the paper's ImageNet rule). warmup: the first `warmup` units run at lr x warmup_factor
    ("constant", the paper's ResNet-110) or ramp linearly from it ("linear").
    """

    unit: str = "epoch"
    total: int = 180
    kind: str = "multistep"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup: int = 0
    warmup_factor: float = 0.1
    warmup_kind: str = "constant"
    plateau_patience: int = 5
    plateau_threshold: float = 0.0  # in error-% points an eval must improve by to count

    def __post_init__(self):
        choices = (("unit", ("iter", "epoch")), ("kind", ("multistep", "plateau")),
                   ("warmup_kind", ("constant", "linear")))
        for key, allowed in choices:
            if getattr(self, key) not in allowed:
                raise ValueError(f"schedule.{key}={getattr(self, key)!r}: expected one of "
                                 f"{', '.join(allowed)}")
        if self.total < 1:
            raise ValueError(f"schedule.total={self.total}: must be >= 1")
        if sorted(self.milestones) != list(self.milestones) or any(
                not 0 < m < self.total for m in self.milestones):
            raise ValueError(f"schedule.milestones={self.milestones}: must be increasing and "
                             f"inside (0, schedule.total={self.total})")
        if self.kind == "plateau" and self.milestones:
            raise ValueError("schedule.milestones apply to kind=multistep, not kind=plateau")
        if not 0 <= self.warmup < self.total:
            raise ValueError(f"schedule.warmup={self.warmup}: must be in [0, {self.total})")
        if not 0 < self.warmup_factor <= 1:
            raise ValueError(f"schedule.warmup_factor={self.warmup_factor}: must be in (0, 1]")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"schedule.gamma={self.gamma}: must be in (0, 1]")


@dataclass
class RunConfig:
    name: str | None = None  # run directory out_dir/name; None = <config stem>-<timestamp>
    out_dir: str = "runs"
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    threads: int = 0  # torch.set_num_threads on CPU; 0 = torch's default
    # auto | bf16 | fp16 | none. auto: bf16 autocast on CUDA and on CPUs with native bf16
    # (AVX512_BF16, AMX), fp32 elsewhere; fp16 is CUDA-only (fp32 on CPU); none: fp32
    amp: str = "auto"
    # torch.compile mode: auto (the fastest measured for the device: train/step.py) | false |
    # default | max-autotune | reduce-overhead
    compile: bool | str = "auto"
    # the whole training step as one CUDA graph: auto (on one CUDA process) | true | false
    cuda_graph: bool | str = "auto"
    log_every: int = 50  # iterations between host syncs (metrics, progress bar, NaN check)
    eval_every: int = 1  # epochs between val evaluations
    ckpt_every: int = 0  # a mid-epoch checkpoint this many iterations after the last one (epoch
    # ends checkpoint too, so epochs shorter than this have none mid-epoch); 0 = at epoch ends
    patience: int | None = None  # stop after this many evals without a better val error
    target_error: float | None = None  # val error % for summary.json's time_to_target
    progress: bool = True  # tqdm bars (only on rank 0 and a TTY)

    def __post_init__(self):
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"run.device={self.device!r}: expected one of auto, cpu, cuda")
        if self.amp not in ("auto", "bf16", "fp16", "none"):
            raise ValueError(f"run.amp={self.amp!r}: expected one of auto, bf16, fp16, none")
        if self.compile is True:
            self.compile = "default"
        if self.compile in ("false", "none"):
            self.compile = False
        if self.compile is not False and self.compile not in COMPILE_MODES:
            raise ValueError(f"run.compile={self.compile!r}: expected false or one of "
                             f"{', '.join(COMPILE_MODES)}")
        if self.cuda_graph not in (True, False, "auto"):
            raise ValueError(f"run.cuda_graph={self.cuda_graph!r}: expected auto, true or false")
        for key in ("log_every", "eval_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"run.{key}={getattr(self, key)}: must be >= 1")
        for key in ("ckpt_every", "threads", "seed"):
            if getattr(self, key) < 0:
                raise ValueError(f"run.{key}={getattr(self, key)}: must be >= 0")
        if self.patience is not None and self.patience < 0:
            raise ValueError(f"run.patience={self.patience}: must be >= 0 or null")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        if self.schedule.kind == "plateau" and self.schedule.warmup:
            raise ValueError("schedule.warmup applies to kind=multistep, not kind=plateau")


# ----------------------------------------------------------------------------- building


def _check_type(value, hint, key: str):
    """`value` converted to `hint` (int -> float, list -> tuple), or ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _check_type(value, option, key)
            except ConfigError as error:
                errors.append(error)
        raise errors[0] if len(errors) == 1 else ConfigError(
            f"{key}={value!r}: expected {_type_name(hint)}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r}: expected a list ({_type_name(hint)})")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{key}={value!r}: expected {len(args)} items")
            items = [_check_type(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            items = [_check_type(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        return origin(items)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(f"{key}={value!r}: expected {_type_name(hint)}, "
                          f"got {type(value).__name__}")
    return value


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) if typing.get_origin(hint) is None else str(hint)


def _build(cls, values: dict, prefix: str):
    """Instance of dataclass `cls` from a nested dict whose keys were all checked."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        key, value = f"{prefix}{f.name}", values[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}={value!r}: expected a mapping of "
                                  f"{hints[f.name].__name__} keys")
            kwargs[f.name] = _build(hints[f.name], value, f"{key}.")
        else:
            kwargs[f.name] = _check_type(value, hints[f.name], key)
    try:
        return cls(**kwargs)
    except ValueError as error:
        message = str(error)  # validators name their full key (data.aug.flip_p=...)
        if not message.startswith(prefix):
            message = f"{prefix.rstrip('.')}: {message}"
        raise ConfigError(message) from error


def valid_keys(cls=Config, prefix: str = "") -> list[str]:
    """Every dotted key of `cls`, sections included: data, data.aug, data.aug.crop, ..."""
    keys, hints = [], typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            keys += valid_keys(hints[f.name], f"{prefix}{f.name}.")
    return keys


def _check_keys(values: dict, source: str, cls=Config, prefix: str = "") -> None:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for name, value in values.items():
        key = prefix + str(name)
        if name not in names:
            close = difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else \
                f"; valid keys here: {', '.join(prefix + n for n in names)}"
            raise ConfigError(f"{source}: unknown key {key!r}{hint}")
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
            _check_keys(value, source, hints[name], key + ".")


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        both_dicts = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both_dicts else value
    return out


def read_yaml(path: str | Path, _seen: tuple = ()) -> dict:
    """The YAML file as a dict with its `base:` chain merged in (base first)."""
    path = Path(path)
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: `base:` chain loops back to itself")
    try:
        values = yaml.load(path.read_text(), Loader=_Loader)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if values is None:
        raise ConfigError(f"{path}: the file is empty (an unsaved editor buffer, or the wrong "
                          "file?); a config sets its keys, or starts from `base: other.yaml`")
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(values).__name__}")
    _check_keys({k: v for k, v in values.items() if k != "base"}, str(path))
    if "base" not in values:
        return values
    base = values.pop("base")
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base={base!r}: expected a file name")
    return _merge(read_yaml(path.parent / base, _seen + (path.resolve(),)), values)


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """`values` with each `key.sub=value` override set (value parsed as YAML)."""
    values = dict(values)
    for item in overrides:
        key, eq, text = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        try:
            value = parse_value(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({error})") from error
        nested = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        _check_keys(nested, f"override {item!r}")
        values = _merge(values, nested)
    return values


def from_dict(values: dict, source: str = "config") -> Config:
    _check_keys(values, source)
    try:
        return _build(Config, values, "")
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Config from a YAML file (None = all defaults) plus CLI overrides, validated. An invalid
    value is reported against the file, or against the override that brought it in."""
    source = str(path) if path is not None else "config"
    values = read_yaml(path) if path is not None else {}
    overrides = list(overrides)
    try:
        return from_dict(apply_overrides(values, overrides), source)
    except ConfigError as error:
        culprit, message = _culprit(values, overrides, source), str(error)
        if culprit == source or message.startswith(f"{culprit}: "):  # named already
            raise
        raise ConfigError(f"{culprit}: {message.removeprefix(source + ': ')}") from None


def _culprit(values: dict, overrides: list[str], source: str) -> str:
    """The file, or the first override, whose addition makes the config invalid."""
    for n in range(len(overrides) + 1):
        try:
            from_dict(apply_overrides(values, overrides[:n]), source)
        except ConfigError:
            return source if n == 0 else f"override {overrides[n - 1]!r}"
    return source


def to_dict(cfg) -> dict:
    """Plain nested dict (lists, not tuples): for YAML and for checkpoints."""
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value
    return plain(dataclasses.asdict(cfg))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
