"""Sweep configuration: YAML → frozen dataclasses, validated at load time.

A sweep file has these top-level keys:

    name:      sweep name, also the folder under results/
    executor:  auto | local | debug | slurm  (the CLI's --executor wins)
    data:      DataConfig      where the images come from and how they are split
    defaults:  TrainConfig     applied to every run (the study's settings if omitted)
    grid:      {key: [values]} crossed with each other
    runs:      [{key: value}]  explicit runs, each crossed with the grid
    resources: Resources       per job; a run may override it with its own `resources:`

Every problem is reported as one line naming the file, the key and what is allowed.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import itertools
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .errors import ConfigError

MODELS = {"torch": ("resnet18", "resnet50", "vgg16", "efficientnet_lite0"), "keras": ("vgg16", "resnet50")}
BACKENDS = {"torch": ("auto", "ddp", "horovod"), "keras": ("auto", "tf-distribute", "horovod")}
EXECUTORS = ("auto", "local", "debug", "slurm")
OPTIMIZERS = ("adam", "sgd")
LOSSES = ("cross_entropy",)
PRECISIONS = ("auto", "fp32", "bf16")
STUDY_SPLIT = (0.75, 0.2375, 0.0125)

# Values that end up in #SBATCH lines: no quotes, spaces, `;`, `$` or backticks.
_SLURM_WORD = re.compile(r"^[A-Za-z0-9_.,:+\-=/@]+$")
_CONSTRAINT = re.compile(r"^[A-Za-z0-9_.,:+\-&|\[\]*()]+$")
_SWEEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
# sbatch long options a sweep may add; the ones crackhpc sets itself are not among them.
SBATCH_EXTRA_OPTIONS = frozenset(
    """acctg-freq begin chdir comment core-spec cores-per-socket delay-boot dependency
    distribution exclude exclusive export gpu-bind gpu-freq gpus-per-task gres gres-flags hint
    licenses mail-type mail-user mcs-label mem-bind mem-per-cpu mem-per-gpu mincpus network nice
    no-requeue nodelist overcommit oversubscribe power prefer priority profile propagate
    reservation signal sockets-per-node spread-job switches threads-per-core thread-spec
    tmp uid use-min-nodes wckey""".split()
)


@dataclass(frozen=True)
class SynthConfig:
    """A synthetic dataset made by `crackhpc data synth` before the jobs start."""

    n: int = 400
    size: int = 227
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    root: str | None = None
    synthetic: SynthConfig | None = None
    split: tuple[float, float, float] = STUDY_SPLIT
    split_seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    framework: str = "torch"
    model: str = "resnet18"
    pretrained: bool = True
    freeze_backbone: bool = True
    epochs: int = 5
    batch_size: int = 100
    optimizer: str = "adam"
    lr: float = 1e-3
    loss: str = "cross_entropy"
    input_size: int = 224
    seed: int = 0
    backend: str = "auto"
    precision: str = "auto"
    # Frozen backbone without augmentation: backbone features are computed once and reused.
    feature_cache: bool = True
    num_workers: int | None = None


@dataclass(frozen=True)
class Resources:
    nodes: int = 1
    gpus_per_node: int = 1
    tasks_per_node: int | None = None
    cpus_per_task: int = 4
    mem_gb: float | None = None
    timeout_min: int = 120
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    job_name: str = "crackhpc"
    array_parallelism: int = 64
    max_requeues: int = 3
    sbatch: Mapping[str, str] = field(default_factory=dict)
    setup: tuple[str, ...] = ()

    @property
    def ntasks_per_node(self) -> int:
        """Tasks follow GPUs (one GPU per task) unless given explicitly."""
        return self.tasks_per_node or max(1, self.gpus_per_node)

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node


@dataclass(frozen=True)
class Sweep:
    name: str
    path: str
    executor: str
    data: DataConfig
    defaults: Mapping[str, Any]
    grid: Mapping[str, tuple]
    runs: tuple[Mapping[str, Any], ...]
    resources: Resources
    overrides: tuple[str, ...] = ()  # the command line's --set edits, kept for sweep.json


_TOP_KEYS = ("name", "description", "executor", "data", "defaults", "grid", "runs", "resources")


class _Where:
    """Builds error messages of the form `<file>: <key path>: <problem>`."""

    def __init__(self, path: str, key: str = ""):
        self.path, self.key = path, key

    def child(self, key: str | int) -> "_Where":
        sub = f"[{key}]" if isinstance(key, int) else (f".{key}" if self.key else str(key))
        return _Where(self.path, self.key + sub)

    def error(self, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {self.key or '<top>'}: {problem}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: _Where) -> Any:
    """Check `value` against the annotation `tp`, converting only where lossless."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise where.error(f"expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where.child(i)) for i, v in enumerate(value))
        if len(value) != len(args):
            raise where.error(f"expected a list of {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, where.child(i)) for i, (v, a) in enumerate(zip(value, args)))
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise where.error(f"expected a mapping, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise where.error(f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise where.error(f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)  # YAML reads `1e-3` (no dot) as a string
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise where.error(f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise where.error(f"expected a string, got {value!r}")
        return value
    raise where.error(f"unsupported type {_type_name(tp)}")  # pragma: no cover


def _check_keys(cls_or_keys, data: Mapping, where: _Where) -> None:
    allowed = [f.name for f in dataclasses.fields(cls_or_keys)] if dataclasses.is_dataclass(cls_or_keys) else list(cls_or_keys)
    for key in data:
        if key not in allowed:
            raise where.child(str(key)).error(f"unknown key (allowed: {', '.join(allowed)})")


def _build(cls: type, data: Any, where: _Where):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise where.error(f"expected a mapping of {', '.join(f.name for f in dataclasses.fields(cls))}")
    _check_keys(cls, data, where)
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(v, hints[k], where.child(k)) for k, v in data.items()})


def _one_of(value: str, allowed, where: _Where) -> None:
    if value not in allowed:
        raise where.error(f"unknown value {value!r} (allowed: {', '.join(allowed)})")


def _positive(value, where: _Where, minimum=1) -> None:
    if value is not None and value < minimum:
        raise where.error(f"must be >= {minimum}, got {value}")


def validate_train(cfg: TrainConfig, where: _Where) -> TrainConfig:
    _one_of(cfg.framework, tuple(MODELS), where.child("framework"))
    _one_of(cfg.model, MODELS[cfg.framework], where.child("model"))
    _one_of(cfg.backend, BACKENDS[cfg.framework], where.child("backend"))
    _one_of(cfg.optimizer, OPTIMIZERS, where.child("optimizer"))
    _one_of(cfg.loss, LOSSES, where.child("loss"))
    _one_of(cfg.precision, PRECISIONS, where.child("precision"))
    for key in ("epochs", "batch_size"):
        _positive(getattr(cfg, key), where.child(key))
    _positive(cfg.input_size, where.child("input_size"), 32)
    _positive(cfg.num_workers, where.child("num_workers"), 0)
    if not cfg.lr > 0:
        raise where.child("lr").error(f"must be > 0, got {cfg.lr}")
    return cfg


def validate_resources(res: Resources, where: _Where) -> Resources:
    for key in ("nodes", "cpus_per_task", "timeout_min", "array_parallelism"):
        _positive(getattr(res, key), where.child(key))
    for key in ("gpus_per_node", "max_requeues"):
        _positive(getattr(res, key), where.child(key), 0)
    _positive(res.tasks_per_node, where.child("tasks_per_node"))
    if res.mem_gb is not None and res.mem_gb <= 0:
        raise where.child("mem_gb").error(f"must be > 0, got {res.mem_gb}")
    if res.gpus_per_node and res.tasks_per_node and res.tasks_per_node != res.gpus_per_node:
        raise where.child("tasks_per_node").error(
            f"one task per GPU: set it to gpus_per_node ({res.gpus_per_node}) or leave it out"
        )
    for key in ("partition", "account", "qos", "job_name"):
        value = getattr(res, key)
        if value is not None and not _SLURM_WORD.match(value):
            raise where.child(key).error(f"{value!r} has characters Slurm names cannot hold (use letters, digits, _ . , : + - = / @)")
    if res.constraint is not None and not _CONSTRAINT.match(res.constraint):
        raise where.child("constraint").error(f"{res.constraint!r} is not a Slurm constraint expression (letters, digits and & | [ ] * ( ) , only)")
    for opt, value in res.sbatch.items():
        if opt not in SBATCH_EXTRA_OPTIONS:
            raise where.child("sbatch").child(opt).error(
                "not an sbatch option crackhpc passes through (see crackhpc.config.SBATCH_EXTRA_OPTIONS); "
                "resources such as time, partition and gpus have their own keys"
            )
        if not _SLURM_WORD.match(value):
            raise where.child("sbatch").child(opt).error(f"value {value!r} has shell metacharacters or spaces")
    return res


def validate_data(data: DataConfig, where: _Where, base: Path) -> DataConfig:
    if (data.root is None) == (data.synthetic is None):
        raise where.error("give exactly one of `root` (a dataset folder) or `synthetic` ({n, size, seed})")
    if data.synthetic is not None:
        _positive(data.synthetic.n, where.child("synthetic").child("n"), 2)
        _positive(data.synthetic.size, where.child("synthetic").child("size"), 16)
    split = data.split
    if any(f < 0 for f in split) or abs(sum(split) - 1.0) > 1e-6 or split[0] == 0 or split[2] == 0:
        raise where.child("split").error(f"train/valid/test fractions must be >= 0, sum to 1 with train and test > 0, got {list(split)}")
    if data.root is not None:
        root = Path(data.root).expanduser()
        data = dataclasses.replace(data, root=str(root if root.is_absolute() else (base / root).resolve()))
    return data


def train_config(values: Mapping[str, Any], where: _Where) -> TrainConfig:
    """Build and validate a TrainConfig from the study defaults plus `values`."""
    return validate_train(_build(TrainConfig, dict(values), where), where)


def apply_overrides(raw: Any, overrides: Sequence[str], path: Path) -> Any:
    """Command-line edits `KEY.PATH=VALUE` of a sweep's YAML (VALUE is YAML: 64, false, null,
    [0.6, 0.2, 0.2], {n: 400}), applied before validation so an edited sweep is checked like a
    written one. List items are addressed by index: runs.0.epochs=2."""
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. defaults.epochs=2 or data.synthetic={{n: 400}}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML: {getattr(exc, 'problem', exc)}") from None
        node = raw
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[:depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {item!r}: {where}: {path} has no item {part} there (0..{len(node) - 1})")
                part = int(part)
            elif not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {where}: {'.'.join(parts[:depth])} in {path} is a value, not a mapping")
            if last:
                node[part] = value
            else:
                if isinstance(node, dict) and node.get(part) is None:
                    node[part] = {}
                node = node[part]
    return raw


def load_sweep(path: str | Path, base: Path | None = None, overrides: Sequence[str] = ()) -> Sweep:
    """Load and validate a sweep YAML, with `--set` overrides applied first.
    Relative data paths are taken from `base` (default: cwd)."""
    path = Path(path)
    where = _Where(f"{path} (with --set)" if overrides else str(path))
    if not path.is_file():
        raise ConfigError(f"{path}: no such sweep file (sweeps live in jobs/, e.g. jobs/smoke.yaml)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{line}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise where.error("a sweep file must be a mapping with at least `name` and `data`")
    raw = apply_overrides(raw, overrides, path)
    _check_keys(_TOP_KEYS, raw, where)
    name = raw.get("name")
    if not isinstance(name, str) or not _SWEEP_NAME.match(name):
        raise where.child("name").error(f"required; letters, digits, _ . - only, got {name!r}")
    executor = _coerce(raw.get("executor", "auto"), str, where.child("executor"))
    _one_of(executor, EXECUTORS, where.child("executor"))
    if "data" not in raw:
        raise where.child("data").error("required: `root: /path/to/dataset` or `synthetic: {n: 400, size: 64}`")
    data = validate_data(_build(DataConfig, raw["data"], where.child("data")), where.child("data"), base or Path.cwd())

    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise where.child("defaults").error("expected a mapping of training settings")
    train_config(defaults, where.child("defaults"))

    grid_raw = raw.get("grid") or {}
    if not isinstance(grid_raw, dict):
        raise where.child("grid").error("expected a mapping of key: [values]")
    hints = typing.get_type_hints(TrainConfig)
    grid: dict[str, tuple] = {}
    for key, values in grid_raw.items():
        w = where.child("grid").child(str(key))
        _check_keys(TrainConfig, {key: None}, where.child("grid"))
        values = values if isinstance(values, list) else [values]
        if not values:
            raise w.error("empty list: give at least one value or remove the key")
        grid[key] = tuple(_coerce(v, hints[key], w.child(i)) for i, v in enumerate(values))

    runs_raw = raw.get("runs", [])
    if not isinstance(runs_raw, list):
        raise where.child("runs").error("expected a list of mappings")
    if "runs" in raw and not runs_raw:
        raise where.child("runs").error("empty list: give at least one run or remove the key")
    runs = []
    for i, entry in enumerate(runs_raw):
        w = where.child("runs").child(i)
        if not isinstance(entry, dict):
            raise w.error("expected a mapping of training settings")
        _check_keys([f.name for f in dataclasses.fields(TrainConfig)] + ["resources"], entry, w)
        overlap = sorted(set(entry) & set(grid))
        if overlap:
            raise w.child(overlap[0]).error("also set in grid: set it in one place")
        settings = {k: v for k, v in entry.items() if k != "resources"}
        for combo in itertools.product(*([(k, v) for v in vs] for k, vs in grid.items())):
            train_config({**defaults, **settings, **dict(combo)}, w if not combo else where.child("grid"))
        runs.append(entry)
    if not runs_raw:
        for combo in itertools.product(*([(k, v) for v in vs] for k, vs in grid.items())):
            train_config({**defaults, **dict(combo)}, where.child("grid"))

    resources = validate_resources(_build(Resources, raw.get("resources"), where.child("resources")), where.child("resources"))
    return Sweep(
        name=name,
        path=str(path),
        executor=executor,
        data=data,
        defaults=defaults,
        grid=grid,
        runs=tuple(runs),
        resources=resources,
        overrides=tuple(overrides),
    )


def resources_for(sweep: Sweep, entry: Mapping[str, Any], where: _Where) -> Resources:
    """Sweep-wide resources with a run's own `resources:` overrides applied."""
    override = entry.get("resources") or {}
    merged = {**_as_dict(sweep.resources), **(override if isinstance(override, dict) else {})}
    if not isinstance(override, dict):
        raise where.child("resources").error("expected a mapping")
    return validate_resources(_build(Resources, merged, where.child("resources")), where.child("resources"))


def _as_dict(obj) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else (dict(value) if isinstance(value, Mapping) else value)
    return out


def to_plain(obj) -> Any:
    """A dataclass tree as plain YAML/JSON-able values."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def from_plain(cls: type, data: Mapping[str, Any], source: str):
    """Inverse of to_plain for a run folder's config.yaml; validated like a sweep."""
    return _build(cls, data, _Where(source))
