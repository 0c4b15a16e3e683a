"""Sweep configuration: YAML → frozen pydantic models, validated at load time, and the run it makes.

A sweep file has these top-level keys:

    name:      sweep name, also the folder under results/
    executor:  auto | local | debug | slurm  (the CLI's --executor wins)
    data:      DataConfig      where the images come from and how they are split
    defaults:  TrainConfig     applied to every run (the study's settings if omitted)
    grid:      {key: [values]} crossed with each other
    runs:      [{key: value}]  explicit runs, each crossed with the grid
    search:    SearchConfig    instead of a grid: Optuna draws the runs (crackhpc.search); `runs`
                               then are a choice the search makes (its `run` parameter)
    resources: Resources       per job; a run may override it with its own `resources:`
    x-...:                     anything, for YAML anchors that merge keys (`<<: *name`) reuse

Every problem is reported as one line naming the file, the key and what is allowed:
`<file>: <key.path>: <problem> (allowed: …)`.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from . import models
from .errors import ConfigError

MODELS = models.STUDY  # the study's; crackhpc.models says which other names a sweep may give
BACKENDS = {"torch": ("auto", "ddp", "horovod"), "keras": ("auto", "tf-distribute", "horovod")}
EXECUTORS = ("auto", "local", "debug", "slurm")
CHECKPOINTS = ("last", "best", "none")
STUDY_SPLIT = (0.75, 0.2375, 0.0125)
# A sweep larger than this is refused before its grid is crossed (`--max-runs` lifts it): a typo
# such as a 100-value list crossed with two more would otherwise hang the login node, then flood
# the queue. Slurm's default MaxArraySize is 1001.
MAX_RUNS = 1000
MAX_SEED = 2**32 - 1  # numpy's and torch's seeds

# Values that end up in #SBATCH lines: no quotes, spaces, `;`, `$` or backticks.
_SLURM_WORD = re.compile(r"^[A-Za-z0-9_.,:+\-=/@]+$")
_CONSTRAINT = re.compile(r"^[A-Za-z0-9_.,:+\-&|\[\]*()]+$")
# Folder names: the sweep's, and under it the run ids made from it (with room for both under NAME_MAX).
_SWEEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
# sbatch long options a sweep may add; the ones crackhpc sets itself are not among them.
SBATCH_EXTRA_OPTIONS = frozenset(
    """acctg-freq begin chdir comment core-spec cores-per-socket delay-boot dependency
    distribution exclude exclusive export gpu-bind gpu-freq gpus-per-task gres gres-flags hint
    licenses mail-type mail-user mcs-label mem-bind mem-per-cpu mem-per-gpu mincpus network nice
    no-requeue nodelist overcommit oversubscribe power prefer priority profile propagate
    reservation signal sockets-per-node spread-job switches threads-per-core thread-spec
    tmp uid use-min-nodes wckey""".split()
)


def _problem(text: str, key: str | None = None) -> PydanticCustomError:
    """A problem in crackhpc's words; `key`: the sub-key (`lr.log_uniform`) it is about, for its path."""
    return PydanticCustomError("crackhpc", text, {"key": key} if key else None)


def _number(value: Any) -> Any:
    if isinstance(value, bool):
        raise _problem(f"expected a number, got {value!r}")
    if isinstance(value, str):
        try:
            return float(value)  # YAML reads `1e-3` (no dot) as a string
        except ValueError:
            raise _problem(f"expected a number, got {value!r}") from None
    return value


Number = Annotated[float, BeforeValidator(_number), Field(allow_inf_nan=False)]
Seed = Annotated[StrictInt, Field(ge=0, le=MAX_SEED)]


def _slurm_word(value: str | None) -> str | None:
    if value is not None and not _SLURM_WORD.match(value):
        raise _problem(f"{value!r} has characters Slurm names cannot hold (use letters, digits, _ . , : + - = / @)")
    return value


SlurmWord = Annotated[StrictStr, BeforeValidator(lambda v: v if not isinstance(v, str) else _slurm_word(v))]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# The kinds of damage `crackhpc data synth --classes` draws (crackhpc/data/synth.py), "clean" for none.
SYNTH_CLASSES = ("crack", "spalling", "stain", "holes", "joint", "scratch", "clean")


class SynthConfig(_Model):
    """A synthetic dataset made by `crackhpc data synth` before the jobs start: the crack dataset
    (Positive/ Negative/), or with `classes` one folder per kind of damage."""

    n: StrictInt = Field(400, ge=2)
    size: StrictInt = Field(227, ge=16)
    seed: Seed = 0
    classes: tuple[StrictStr, ...] | None = None

    @field_validator("classes")
    @classmethod
    def _kinds(cls, classes):
        if classes is not None:
            for kind in classes:
                _one_of(kind, SYNTH_CLASSES)
            if len(set(classes)) < 2 or len(set(classes)) != len(classes):
                raise _problem(f"give two or more different classes, got {list(classes)}")
        return classes

    @model_validator(mode="after")
    def _one_per_class(self):
        if self.classes and self.n < len(self.classes):
            raise _problem(f"n: {self.n} images for {len(self.classes)} classes; give at least one per class")
        return self


def _three(value: Any) -> Any:
    if isinstance(value, (list, tuple)) and len(value) != 3:
        raise _problem(f"expected a list of 3 values, got {len(value)}")
    return value


class DataConfig(_Model):
    root: StrictStr | None = None
    synthetic: SynthConfig | None = None
    split: Annotated[tuple[Number, Number, Number], BeforeValidator(_three)] = STUDY_SPLIT
    split_seed: Seed = 0
    # The class folders' names in label order: found in the dataset at submission and recorded in each
    # run's config.yaml; given in the sweep file, a dataset with other classes is refused.
    classes: tuple[StrictStr, ...] | None = None

    @field_validator("split")
    @classmethod
    def _fractions(cls, split):
        if any(f < 0 for f in split) or abs(sum(split) - 1.0) > 1e-6 or split[0] == 0 or split[2] == 0:
            raise _problem(
                f"train/valid/test fractions must be >= 0, sum to 1 with train and test > 0, got {list(split)}"
            )
        return split


def _one_of(value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise _problem(f"unknown value {value!r} (allowed: {', '.join(allowed)})")
    return value


class TrainConfig(_Model):
    framework: StrictStr = "torch"
    model: StrictStr = "resnet18"
    pretrained: StrictBool = True
    freeze_backbone: StrictBool = True
    epochs: StrictInt = Field(5, ge=1)
    batch_size: StrictInt = Field(100, ge=1)
    optimizer: StrictStr = "adam"
    lr: Number = Field(1e-3, gt=0)
    loss: StrictStr = "cross_entropy"
    input_size: StrictInt = Field(224, ge=32)  # the model's own when left out (224 for the study's)
    seed: Seed = 0
    backend: StrictStr = "auto"
    precision: StrictStr = "auto"
    compile: StrictBool | StrictStr = "auto"  # torch.compile: auto | true | false
    # Frozen backbone without augmentation: backbone features are computed once and reused.
    feature_cache: StrictBool = True
    num_workers: StrictInt | None = Field(None, ge=0)
    # What a completed run keeps of its training (crackhpc.worker.common.finish): the weights of its
    # last epoch, of its best validation epoch, or nothing. Live runs keep the optimizer for requeues.
    checkpoints: StrictStr = "last"

    @model_validator(mode="before")
    @classmethod
    def _model_input_size(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("input_size") is None and isinstance(data.get("model"), str):
            try:
                size = models.default_input_size(str(data.get("framework", "torch")), data["model"])
            except Exception:  # noqa: BLE001  (an unknown name: the `model` field reports it)
                return data
            return {**data, "input_size": size}
        return data

    @field_validator("framework", "optimizer", "loss", "precision", "checkpoints")
    @classmethod
    def _choice(cls, value: str, info: ValidationInfo) -> str:
        allowed = {
            "framework": tuple(MODELS),
            "optimizer": ("adam", "sgd"),
            "loss": ("cross_entropy",),
            "precision": ("auto", "fp32", "bf16"),
            "checkpoints": CHECKPOINTS,
        }
        return _one_of(value, allowed[str(info.field_name)])

    @field_validator("compile")
    @classmethod
    def _compile(cls, value: bool | str, info: ValidationInfo) -> bool | str:
        if isinstance(value, str):
            if value != "auto":
                raise _problem(f"unknown value {value!r} (allowed: auto, true, false)")
        elif value and info.data.get("framework") == "keras":
            raise _problem("torch.compile is for torch runs; leave it out (or auto) for Keras")
        return value

    @field_validator("model", "backend")
    @classmethod
    def _framework_choice(cls, value: str, info: ValidationInfo) -> str:
        framework = info.data.get("framework")
        if framework is None:  # already reported
            return value
        if info.field_name == "model":
            try:
                models.parse(framework, value)  # its form; the registries are read once per sweep at load
            except models.UnknownModel as exc:
                raise _problem(str(exc)) from None
            return value
        return _one_of(value, BACKENDS[framework])


class Resources(_Model):
    nodes: StrictInt = Field(1, ge=1)
    gpus_per_node: StrictInt = Field(1, ge=0)
    tasks_per_node: StrictInt | None = Field(None, ge=1)
    cpus_per_task: StrictInt = Field(4, ge=1)
    mem_gb: Number | None = Field(None, gt=0)
    timeout_min: StrictInt = Field(120, ge=1)
    partition: SlurmWord | None = None
    account: SlurmWord | None = None
    qos: SlurmWord | None = None
    constraint: StrictStr | None = None
    job_name: SlurmWord = "crackhpc"
    array_parallelism: StrictInt = Field(64, ge=1)
    max_requeues: StrictInt = Field(3, ge=0)
    sbatch: dict[str, Any] = Field(default_factory=dict)
    setup: tuple[StrictStr, ...] = ()

    @field_validator("constraint")
    @classmethod
    def _constraint(cls, value):
        if value is not None and not _CONSTRAINT.match(value):
            raise _problem(f"{value!r} is not a Slurm constraint expression (letters, digits and & | [ ] * ( ) , only)")
        return value

    @field_validator("sbatch")
    @classmethod
    def _sbatch(cls, options: dict) -> dict:
        for opt, value in options.items():
            if opt not in SBATCH_EXTRA_OPTIONS:
                raise _problem(
                    f"{opt}: not an sbatch option crackhpc passes through (see "
                    "crackhpc.config.SBATCH_EXTRA_OPTIONS); resources such as time, partition and gpus have their own keys"
                )
            if not _SLURM_WORD.match(str(value)):
                raise _problem(f"{opt}: value {value!r} has shell metacharacters or spaces")
        # `true` is a flag (`no-requeue: true` gives --no-requeue), `false` leaves the option out.
        return {str(k): True if v is True else str(v) for k, v in options.items() if v is not False}

    @model_validator(mode="after")
    def _one_task_per_gpu(self):
        if self.gpus_per_node and self.tasks_per_node and self.tasks_per_node != self.gpus_per_node:
            raise _problem(
                f"tasks_per_node: one task per GPU: set it to gpus_per_node ({self.gpus_per_node}) or leave it out"
            )
        return self

    @property
    def ntasks_per_node(self) -> int:
        """Tasks follow GPUs (one GPU per task) unless given explicitly."""
        return self.tasks_per_node or max(1, self.gpus_per_node)

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node


SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("asha", "median", "none")
SEARCH_METRICS = {"val_acc": "maximize", "val_loss": "minimize"}  # metrics.csv's columns, per epoch
RANGES = ("uniform", "log_uniform", "int")  # a range in a search's space: {log_uniform: [1.0e-5, 1.0e-2]}


class SearchConfig(_Model):
    """`search:` of a sweep file: Optuna draws `trials` runs from `space`, at most `parallel` live at
    once, and stops poor ones early at an epoch's end (`prune`)."""

    sampler: StrictStr = "tpe"
    trials: StrictInt = Field(20, ge=1)
    parallel: StrictInt = Field(4, ge=1)
    metric: StrictStr = "val_acc"
    direction: StrictStr | None = None  # maximize | minimize; by default the metric's own
    prune: StrictStr = "asha"
    min_resource: StrictInt = Field(1, ge=1)  # epochs every run trains before it may be pruned
    reduction_factor: StrictInt = Field(3, ge=2)  # asha: about 1 in this many runs goes on at each rung
    seed: Seed | None = None  # the sampler's, for a search that draws the same settings again
    controller_timeout_min: StrictInt | None = Field(None, ge=1)  # --controller slurm's time limit
    space: dict[str, Any]

    @field_validator("sampler", "prune", "metric", "direction")
    @classmethod
    def _choice(cls, value: str | None, info: ValidationInfo) -> str | None:
        allowed = {
            "sampler": SAMPLERS,
            "prune": PRUNERS,
            "metric": tuple(SEARCH_METRICS),
            "direction": ("maximize", "minimize"),
        }
        return value if value is None else _one_of(value, allowed[str(info.field_name)])

    @field_validator("space")
    @classmethod
    def _space(cls, space: dict[str, Any]) -> dict[str, Any]:
        if not space:
            raise _problem("empty: give at least one setting to search, e.g. lr: {log_uniform: [1.0e-5, 1.0e-2]}")
        for key, values in space.items():
            if key not in TrainConfig.model_fields or key == "framework":
                allowed = ", ".join(k for k in TrainConfig.model_fields if k != "framework")
                raise _problem(f"not a setting a search can draw (allowed: {allowed})", key)
            if isinstance(values, list):
                if not values or len(set(map(repr, values))) < len(values):
                    raise _problem(f"give a list of distinct values, got {values!r}", key)
                continue
            if not isinstance(values, dict) or len(values) != 1 or next(iter(values)) not in RANGES:
                raise _problem(
                    f"give a list of values or one range, {{{' | '.join(RANGES)}: [low, high]}}, got {values!r}", key
                )
            kind, bounds = next(iter(values.items()))
            if not isinstance(bounds, list) or len(bounds) != 2:
                raise _problem(f"give [low, high], got {bounds!r}", f"{key}.{kind}")
            try:
                low, high = (float(_number(b)) for b in bounds)
            except PydanticCustomError:
                raise _problem(f"give two numbers [low, high], got {bounds!r}", f"{key}.{kind}") from None
            if kind == "int" and not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds):
                raise _problem(f"give two integers [low, high], got {bounds!r}", f"{key}.int")
            if kind == "log_uniform" and low <= 0:
                raise _problem(f"the range must be > 0 (a logarithm), got {bounds!r}", f"{key}.log_uniform")
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise _problem(f"give finite low < high, got {bounds!r}", f"{key}.{kind}")
        return space

    @model_validator(mode="after")
    def _grid_of_lists(self):
        if self.sampler == "grid":
            ranges = [k for k, v in self.space.items() if not isinstance(v, list)]
            if ranges:
                raise _problem("sampler grid draws from lists of values only; give a list", f"space.{ranges[0]}")
        return self

    @property
    def maximize(self) -> bool:
        return (self.direction or SEARCH_METRICS[self.metric]) == "maximize"


class RunSpec(_Model):
    """One run: what its config.yaml holds and its worker reads."""

    run_id: StrictStr
    sweep: StrictStr
    train: TrainConfig
    data: DataConfig
    resources: Resources
    # The training settings that differ between the runs of its sweep: its TensorBoard HParams.
    varying: tuple[StrictStr, ...] = ()
    # How images are prepared for the model (crackhpc.models.preprocessing), for the record.
    preprocess: dict[str, Any] = Field(default_factory=dict)
    # The sweep's split manifest, relative to the run folder (crackhpc.rundir.manifest_path); None in
    # run folders of sweeps from before it was shared, which hold their own split.csv.
    manifest: StrictStr | None = None

    def to_plain(self) -> dict:
        return self.model_dump(mode="json")


class _SweepFile(_Model):
    """The top level of a sweep file; the training settings are checked per run once crossed."""

    name: Annotated[StrictStr, Field(pattern=_SWEEP_NAME.pattern)]
    description: StrictStr | None = None
    executor: StrictStr = "auto"
    data: DataConfig
    defaults: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, Any] = Field(default_factory=dict)
    runs: list[dict[str, Any]] | None = None
    resources: dict[str, Any] = Field(default_factory=dict)
    search: SearchConfig | None = None

    @field_validator("executor")
    @classmethod
    def _executor(cls, value):
        return _one_of(value, EXECUTORS)

    @field_validator("data")
    @classmethod
    def _one_source(cls, data: DataConfig) -> DataConfig:
        # A run's config.yaml names both: the synthetic dataset's folder, once made, and how it was made.
        if (data.root is None) == (data.synthetic is None):
            raise _problem("give exactly one of `root` (a dataset folder) or `synthetic` ({n, size, seed})")
        return data

    @field_validator("defaults", "resources", "grid", mode="before")
    @classmethod
    def _none_is_empty(cls, value):
        return {} if value is None else value


class Sweep(_Model):
    name: str
    path: str
    executor: str
    data: DataConfig
    resources: Resources  # sweep-wide; a run's own `resources:` is in its entry
    # Every run of the sweep, crossed once at load: (the explicit run's index or None, its settings).
    entries: tuple[tuple[int | None, TrainConfig, Resources], ...]
    overrides: tuple[str, ...] = ()  # the command line's --set edits, kept for sweep.json
    # A search draws its runs (crackhpc.search); `entries` are then the explicit runs it chooses from.
    search: SearchConfig | None = None


# -- errors -------------------------------------------------------------------------------------


def _key(loc: Sequence) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_MESSAGES = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "dict_type": "expected a mapping",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
}


def _allowed(model: type[BaseModel] | None, loc: Sequence) -> str:
    """The keys a mapping at `loc` of `model` may hold."""
    for part in loc:
        field = model.model_fields.get(part) if model and isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        model = next(
            (a for a in (ann, *getattr(ann, "__args__", ())) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
    return ", ".join(model.model_fields) if model else ""


def _describe(err: dict, model: type[BaseModel] | None) -> tuple[str, str]:
    """(key path, problem) of one pydantic error, in crackhpc's words."""
    loc, kind = list(err["loc"]), err["type"]
    if kind == "crackhpc":
        message = err["msg"]
        if key := (err.get("ctx") or {}).get("key"):
            return _key([*loc, *key.split(".")]), message
        if loc and loc[-1] == "sbatch" or message.startswith("tasks_per_node:"):
            key, _, message = message.partition(": ")  # the offending sub-key goes in the path
            loc.append(key)
        return _key(loc), message
    value = err.get("input")
    if kind == "extra_forbidden":
        return _key(loc), f"unknown key (allowed: {_allowed(model, loc[:-1])})"
    if kind == "missing":
        return _key(loc), "required"
    if kind in ("greater_than_equal", "greater_than"):
        op, bound = (">=", err["ctx"]["ge"]) if kind == "greater_than_equal" else (">", err["ctx"]["gt"])
        return _key(loc), f"must be {op} {bound}, got {value}"
    if kind == "less_than_equal":
        return _key(loc), f"must be <= {err['ctx']['le']}, got {value}"
    if kind == "finite_number":
        return _key(loc), f"must be a finite number, got {value}"
    if kind == "string_pattern_mismatch" and loc == ["name"]:
        return "name", f"letters, digits, _ . - only, at most 100 characters, got {value!r}"
    if kind in _MESSAGES:
        return _key(loc), f"{_MESSAGES[kind]}, got {value!r}"
    return _key(loc), err["msg"]


def validate(model: type[BaseModel], data: Any, where: str, prefix: Sequence = ()):
    """`model` from plain data, or a ConfigError `<where>: <key path>: <problem>` on the first problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        key, problem = _describe(dict(exc.errors()[0]), model)
        full = _key([*prefix, *([key] if key else [])])
        raise ConfigError(f"{where}: {full or '<top>'}: {problem}") from None


# -- loading ------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML whose mappings refuse a key given twice: PyYAML keeps the last silently (`epochs: 1` … `epochs: 50`).
    Merge keys (`<<: *defaults`) still work: a key the mapping sets itself overrides the merged one,
    as YAML means it to; only a key written twice in the mapping itself is refused."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> Any:
    """A YAML file crackhpc reads from a person (sweeps, profiles), or a one-line ConfigError."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{line}: {getattr(exc, 'problem', exc)}") from None


def apply_overrides(raw: Any, overrides: Sequence[str], path: Path) -> Any:
    """Command-line edits `KEY.PATH=VALUE` of a sweep's YAML (VALUE is YAML: 64, false, null,
    [0.6, 0.2, 0.2], {n: 400}), applied before validation so an edited sweep is checked like a
    written one. List items are addressed by index: runs.0.epochs=2."""
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(
                f"--set {item!r}: expected KEY.PATH=VALUE, e.g. defaults.epochs=2 or data.synthetic={{n: 400}}"
            )
        try:
            value = yaml.load(text, Loader=_UniqueKeyLoader)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML: {getattr(exc, 'problem', exc)}") from None
        node = raw
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            index: str | int = part
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {item!r}: {where}: {path} has no item {part} there (0..{len(node) - 1})")
                index = int(part)
            elif not isinstance(node, dict):
                raise ConfigError(
                    f"--set {item!r}: {where}: {'.'.join(parts[:depth])} in {path} is a value, not a mapping"
                )
            if last:
                node[index] = value
            else:
                if isinstance(node, dict) and node.get(index) is None:
                    node[index] = {}
                node = node[index]
    return raw


def _grid(raw: Mapping[str, Any], where: str) -> dict[str, list]:
    grid = {}
    for key, values in raw.items():
        if key not in TrainConfig.model_fields:
            raise ConfigError(f"{where}: grid.{key}: unknown key (allowed: {', '.join(TrainConfig.model_fields)})")
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ConfigError(f"{where}: grid.{key}: empty list: give at least one value or remove the key")
        grid[key] = values
    return grid


def check_model(train: TrainConfig, where: str) -> None:
    """The run's model name against its library's registry (imported for its names only), and that
    a pretrained one publishes weights: a ConfigError `<where>: <problem>` with close matches."""
    try:
        models.check(train.framework, train.model, train.pretrained)
    except models.UnknownModel as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_models(entries: Sequence[tuple[int | None, TrainConfig, Resources]], where: str, grid, runs) -> None:
    """check_model for each run, naming the key that gave its model."""
    for index, train, _ in entries:
        if "model" in grid:
            key = "grid.model"
        elif runs is not None and index is not None and "model" in runs[index]:
            key = f"runs[{index}].model"
        else:
            key = "defaults.model"
        check_model(train, f"{where}: {key}")


def load_sweep(
    path: str | Path,
    base: Path | None = None,
    overrides: Sequence[str] = (),
    max_runs: int = MAX_RUNS,
    edit: Callable[[dict], dict] | None = None,
) -> Sweep:
    """Load and validate a sweep YAML, with `--set` overrides applied first, then `edit` (a cluster
    profile's defaults: crackhpc.profiles.apply_profile), and cross its grid.
    Relative data paths are taken from `base` (default: cwd)."""
    path = Path(path)
    where = f"{path} (with --set)" if overrides else str(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such sweep file (sweeps live in jobs/, e.g. jobs/smoke.yaml)")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: <top>: a sweep file must be a mapping with at least `name` and `data`")
    # `x-...` keys hold what other keys merge in (`x-common: &common {...}`, then `<<: *common`), as
    # in docker-compose files; the sweep itself does not read them.
    raw = apply_overrides({k: v for k, v in raw.items() if not str(k).startswith("x-")}, overrides, path)
    if edit is not None:
        raw = edit(raw)
    if "data" not in raw and "name" in raw:
        raise ConfigError(f"{where}: data: required: `root: /path/to/dataset` or `synthetic: {{n: 400, size: 64}}`")
    top = validate(_SweepFile, raw, where)
    data = top.data
    if data.root is not None:
        root = Path(data.root).expanduser()
        data = data.model_copy(
            update={"root": str(root if root.is_absolute() else ((base or Path.cwd()) / root).resolve())}
        )
    validate(TrainConfig, top.defaults, where, ["defaults"])
    if top.search is not None and top.grid:
        raise ConfigError(
            f"{where}: search: give either grid: or search:, not both (a search draws its runs from its space "
            "instead of crossing a grid): move the grid's lists into search.space"
        )
    grid = _grid(top.grid, where)
    if top.runs is not None and not top.runs:
        raise ConfigError(f"{where}: runs: empty list: give at least one run or remove the key")
    explicit = top.runs or [{}]
    if top.search is not None and top.search.sampler == "grid":
        points = len(explicit) * math.prod(len(v) for v in top.search.space.values())
        if top.search.trials > points:
            raise ConfigError(
                f"{where}: search.trials: {top.search.trials} trials, but the grid has only {points} points "
                "(its lists crossed, and with each explicit run): give at most that"
            )
    total = len(explicit) * math.prod(len(v) for v in grid.values())
    if total > max_runs:
        sizes = " x ".join(str(n) for n in [len(explicit)] * bool(top.runs) + [len(v) for v in grid.values()])
        raise ConfigError(
            f"{where}: grid: {total:,} runs ({sizes}), more than the limit of {max_runs:,}: "
            f"shrink the grid or pass --max-runs {total}"
        )
    sweep_resources = validate(Resources, top.resources, where, ["resources"])
    entries = []
    for i, entry in enumerate(explicit):
        prefix = ["runs", i] if top.runs else []
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: runs[{i}]: expected a mapping of training settings")
        if overlap := sorted(set(entry) & set(grid)):
            raise ConfigError(f"{where}: {_key([*prefix, overlap[0]])}: also set in grid: set it in one place")
        settings = {k: v for k, v in entry.items() if k != "resources"}
        resources = sweep_resources
        if "resources" in entry:
            override = entry["resources"]
            if not isinstance(override, dict):
                raise ConfigError(f"{where}: {_key([*prefix, 'resources'])}: expected a mapping")
            resources = validate(Resources, {**top.resources, **override}, where, [*prefix, "resources"])
        if top.search is not None:
            _check_space(top.search, {**top.defaults, **settings}, where, prefix)
        for values in itertools.product(*grid.values()):
            combo = dict(zip(grid, values))
            train = validate(TrainConfig, {**top.defaults, **settings, **combo}, where, ["grid"] if combo else prefix)
            entries.append((i if top.runs else None, train, resources))
    _check_models(entries, where, grid, explicit if top.runs else None)
    return Sweep(
        name=top.name,
        path=str(path),
        executor=top.executor,
        data=data,
        resources=sweep_resources,
        entries=tuple(entries),
        overrides=tuple(overrides),
        search=top.search,
    )


def _check_space(search: SearchConfig, settings: dict[str, Any], where: str, prefix: list) -> None:
    """Each value of a search's space, and each end of its ranges, is a valid setting of the run it
    goes into (a run of `runs:` must not set a key the search draws)."""
    for key, values in search.space.items():
        if key in settings and prefix:
            raise ConfigError(f"{where}: {_key([*prefix, key])}: also in search.space: set it in one place")
        if isinstance(values, dict):
            kind, bounds = next(iter(values.items()))
            values = bounds if kind == "int" else [float(_number(b)) for b in bounds]
        for value in values:
            train = validate(TrainConfig, {**settings, key: value}, where, ["search", "space"])
            if key == "model":
                check_model(train, f"{where}: search.space.model")
