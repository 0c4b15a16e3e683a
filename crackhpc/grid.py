"""A sweep's runs, each with a stable, readable id.

The id is `framework-model-<the keys that vary in this sweep>-<hash>`; the hash covers the
resolved training and data settings (not the resources), so the same YAML always yields the
same ids and a longer time limit does not orphan completed runs. A search's run (a trial) adds
its trial number, `-t<n>`: two trials may draw the same settings.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

from .config import DataConfig, Resources, RunSpec, Sweep, TrainConfig, check_model, validate
from .errors import ConfigError
from .models import preprocessing

RUN_PARAM = "run"  # a search's choice among the sweep file's explicit runs (their index)

_SHORT = {
    "lr": "lr",
    "seed": "s",
    "epochs": "ep",
    "batch_size": "bs",
    "input_size": "px",
    "pretrained": "pre",
    "freeze_backbone": "frz",
    "optimizer": "opt",
    "backend": "be",
    "precision": "prec",
    "compile": "cmp",
    "feature_cache": "fc",
    "loss": "loss",
    "num_workers": "nw",
    "checkpoints": "ckpt",
}


# How fast a run goes, not what it computes: like the resources, out of the hash, so turning
# compile on does not orphan the runs a sweep completed without it.
NOT_HASHED = {"compile"}
# What a run keeps is hashed only where it changes its numbers: `checkpoints: best` tests the best
# validation epoch's weights; `last` (the default, as before the setting existed) and `none` test the last.
SAME_NUMBERS = {"last", "none"}


# Settings added after runs were completed, hashed only when set: unset, they leave those runs' ids as they were.
HASHED_WHEN_SET = {"classes"}


def _without_unset(plain: dict) -> dict:
    return {
        k: _without_unset(v) if isinstance(v, dict) else v
        for k, v in plain.items()
        if not (k in HASHED_WHEN_SET and v is None)
    }


def config_hash(train: TrainConfig, data: DataConfig) -> str:
    exclude = NOT_HASHED | ({"checkpoints"} if train.checkpoints in SAME_NUMBERS else set())
    blob = json.dumps(
        {
            "train": train.model_dump(mode="json", exclude=exclude),
            "data": _without_unset(data.model_dump(mode="json")),
        },
        sort_keys=True,
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:8]


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "y" if value else "n"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def run_id(train: TrainConfig, data: DataConfig, varying: list[str]) -> str:
    # timm:convnext_atto → timm_convnext_atto: a colon splits PATH-like lists (TensorBoard's logdir_spec, scp)
    parts = [train.framework, train.model.replace(":", "_")]
    parts += [f"{_SHORT.get(k, k)}{_fmt(getattr(train, k))}" for k in varying if k not in ("framework", "model")]
    return "-".join(parts + [config_hash(train, data)])


def _varying(sweep: Sweep) -> list[str]:
    """The settings that differ between a sweep's runs: those its entries differ in and those its search draws."""
    drawn = set(sweep.search.space) if sweep.search else set()
    return [k for k in TrainConfig.model_fields if k in drawn or len({getattr(t, k) for _, t, _ in sweep.entries}) > 1]


def trial_run(sweep: Sweep, params: dict[str, Any], number: int) -> RunSpec:
    """Trial `number` of a search: the explicit run it chose (`run`, else the defaults) with the
    settings it drew; a ConfigError if they do not make a valid run together."""
    index, train, resources = sweep.entries[int(params.get(RUN_PARAM, 0))]
    drawn = {k: v for k, v in params.items() if k != RUN_PARAM}
    where = f"{sweep.path}: trial {number}"
    train = validate(TrainConfig, {**train.model_dump(), **drawn}, where, ["search", "space"])
    check_model(train, f"{where}: search.space.model")
    return _spec(sweep, train, resources, _varying(sweep), f"-t{number}")


def _spec(sweep: Sweep, train: TrainConfig, resources: Resources, varying: list[str], suffix: str = "") -> RunSpec:
    """The run of `train` on `resources`, named by its `varying` settings and their hash (and `suffix`)."""
    return RunSpec(
        run_id=run_id(train, sweep.data, varying) + suffix,
        sweep=sweep.name,
        train=train,
        data=sweep.data,
        resources=resources,
        varying=tuple(varying),
        preprocess=preprocessing(train.framework, train.model),
    )


def _candidates(sweep: Sweep) -> list[RunSpec]:
    """A search's runs as far as the weights they load go (what prefetch and the pre-flight check
    need): each explicit run with each model and `pretrained` value its space lists."""
    assert sweep.search is not None
    lists = {k: v for k, v in sweep.search.space.items() if k in ("model", "pretrained") and isinstance(v, list)}
    specs: dict[str, RunSpec] = {}
    for index in range(len(sweep.entries)):
        for values in itertools.product(*lists.values()):
            params = {RUN_PARAM: index, **dict(zip(lists, values))}
            try:
                spec = trial_run(sweep, params, 0)
            except ConfigError:  # a model of the other framework: this run cannot draw it
                continue
            specs.setdefault(spec.run_id, spec)
    return list(specs.values())


def expand(sweep: Sweep) -> list[RunSpec]:
    """All runs of a sweep (crossed at load), named; of a search, the runs its weights checks need
    (its real runs are drawn as it goes: trial_run)."""
    if sweep.search is not None:
        return _candidates(sweep)
    varying = _varying(sweep)
    specs, seen = [], set()
    for index, train, resources in sweep.entries:
        spec = _spec(sweep, train, resources, varying)
        if spec.run_id in seen:
            where = f"runs[{index}]" if index is not None else "defaults"
            raise ConfigError(
                f"{sweep.path}: {where}: two runs resolve to the same settings ({spec.run_id}): remove the duplicate"
            )
        seen.add(spec.run_id)
        specs.append(spec)
    return specs
