"""Expansion of a sweep into runs, each with a stable, readable id.

The id is `framework-model-<the keys that vary in this sweep>-<hash>`; the hash covers the
resolved training and data settings (not the resources), so the same YAML always yields the
same ids and a longer time limit does not orphan completed runs.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass

from .config import DataConfig, Resources, Sweep, TrainConfig, _Where, resources_for, to_plain, train_config

_SHORT = {"lr": "lr", "seed": "s", "epochs": "ep", "batch_size": "bs", "input_size": "px",
          "pretrained": "pre", "freeze_backbone": "frz", "optimizer": "opt", "backend": "be",
          "precision": "prec", "feature_cache": "fc", "loss": "loss", "num_workers": "nw"}


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    sweep: str
    train: TrainConfig
    data: DataConfig
    resources: Resources

    def to_plain(self) -> dict:
        return {"run_id": self.run_id, "sweep": self.sweep, "train": to_plain(self.train),
                "data": to_plain(self.data), "resources": to_plain(self.resources)}


def config_hash(train: TrainConfig, data: DataConfig) -> str:
    blob = json.dumps({"train": to_plain(train), "data": to_plain(data)}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:8]


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "y" if value else "n"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def run_id(train: TrainConfig, data: DataConfig, varying: list[str]) -> str:
    parts = [train.framework, train.model]
    parts += [f"{_SHORT.get(k, k)}{_fmt(getattr(train, k))}" for k in varying if k not in ("framework", "model")]
    return "-".join(parts + [config_hash(train, data)])


def expand(sweep: Sweep) -> list[RunSpec]:
    """All runs of a sweep: each explicit run (or the defaults alone) crossed with the grid."""
    where = _Where(sweep.path)
    keys = list(sweep.grid)
    combos = [dict(zip(keys, values)) for values in itertools.product(*sweep.grid.values())] or [{}]
    entries = list(sweep.runs) or [{}]
    resolved = []
    for i, entry in enumerate(entries):
        w = where.child("runs").child(i) if sweep.runs else where.child("defaults")
        settings = {k: v for k, v in entry.items() if k != "resources"}
        resources = resources_for(sweep, entry, w)
        for combo in combos:
            resolved.append((train_config({**sweep.defaults, **settings, **combo}, w), resources))
    varying = [k for k in TrainConfig.__dataclass_fields__
               if len({getattr(t, k) for t, _ in resolved}) > 1]
    specs, seen = [], {}
    for train, resources in resolved:
        spec = RunSpec(run_id(train, sweep.data, varying), sweep.name, train, sweep.data, resources)
        if spec.run_id in seen:
            raise where.error(f"two runs resolve to the same settings ({spec.run_id}): remove the duplicate")
        seen[spec.run_id] = spec
        specs.append(spec)
    return specs
