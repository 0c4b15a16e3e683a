"""Cluster profiles: a user's per-cluster defaults for sweeps' resources, so that one sweep YAML
runs unchanged on several clusters. The file is $CRACKHPC_CLUSTERS, else
~/.config/crackhpc/clusters.yaml ($XDG_CONFIG_HOME honoured), a mapping of cluster names:

    jureca:                          # Slurm's ClusterName there (`scontrol show config`)
      partition: dc-gpu
      account: myproject
      qos: normal
      constraint: a100
      setup: [module load Stages/2024 CUDA]
      sbatch: {reservation: training}
      cache: /p/scratch/myproject/crackhpc-cache   # $CRACKHPC_CACHE for the jobs: the ImageNet weights

`--cluster NAME` picks a profile; without it, the one named like the cluster Slurm's configuration
names is used, if the file has it. The sweep's own `resources:` win: a profile fills only the keys
the sweep leaves out, its setup lines run before the sweep's, and its sbatch options are overridden
per option. Errors name the file and key, as sweep errors do.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Resources, read_yaml, validate
from .errors import ConfigError
from .slurm import config_value

# The resources keys that belong to a cluster rather than to a sweep's job shape.
RESOURCE_KEYS = ("partition", "account", "qos", "constraint", "setup", "sbatch", "array_parallelism", "max_requeues")
KEYS = (*RESOURCE_KEYS, "cache")
_SHELL_UNSAFE = re.compile(r'["`\\\n]')


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    resources: dict[str, Any] = field(default_factory=dict)  # as written, validated
    cache: str | None = None  # ~ expanded; $VARS left for the job's shell

    def describe(self) -> str:
        return f"cluster profile {self.name} ({self.path})"


def profile_file() -> Path:
    if os.environ.get("CRACKHPC_CLUSTERS"):
        return Path(os.environ["CRACKHPC_CLUSTERS"]).expanduser()
    return Path(os.environ.get("XDG_CONFIG_HOME") or "~/.config").expanduser() / "crackhpc" / "clusters.yaml"


def slurm_cluster_name() -> str | None:
    """The cluster this shell is on, as Slurm names it: $SLURM_CLUSTER_NAME inside a job, else
    ClusterName from `scontrol show config`; None without Slurm."""
    if os.environ.get("SLURM_CLUSTER_NAME"):
        return os.environ["SLURM_CLUSTER_NAME"]
    return config_value("ClusterName")


def load_profiles(path: Path) -> dict[str, Profile]:
    """Every profile of the file, validated."""
    raw = read_yaml(path)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: <top>: expected a mapping of cluster names to their settings, "
            "e.g. `mycluster: {partition: gpu}`"
        )
    profiles = {}
    for name, settings in raw.items():
        if not isinstance(settings, dict):
            raise ConfigError(f"{path}: {name}: expected a mapping of {', '.join(KEYS)}")
        for key in settings:
            if key not in KEYS:
                raise ConfigError(f"{path}: {name}.{key}: unknown key (allowed: {', '.join(KEYS)})")
        resources = {k: v for k, v in settings.items() if k in RESOURCE_KEYS}
        validate(Resources, resources, str(path), [str(name)])  # the checks a sweep's resources get
        cache = settings.get("cache")
        if cache is not None and (not isinstance(cache, str) or not cache or _SHELL_UNSAFE.search(cache)):
            raise ConfigError(
                f"{path}: {name}.cache: expected a folder path without quotes, backslashes or backticks, got {cache!r}"
            )
        profiles[str(name)] = Profile(str(name), path, resources, os.path.expanduser(cache) if cache else None)
    return profiles


def select_profile(name: str | None = None) -> Profile | None:
    """The profile `--cluster NAME` asks for, else the one of the cluster Slurm says this is (None
    where the file is missing or does not name it)."""
    path = profile_file()
    if not path.is_file():
        if name:
            raise ConfigError(
                f"--cluster {name}: no cluster profile file {path} (write one, or point $CRACKHPC_CLUSTERS at it)"
            )
        return None
    profiles = load_profiles(path)
    if name:
        if name not in profiles:
            raise ConfigError(f"{path}: {name}: no such cluster profile (profiles: {', '.join(profiles) or 'none'})")
        return profiles[name]
    return profiles.get(slurm_cluster_name() or "")


def cache_line(cache: str) -> str:
    """The setup line that hands the profile's cache to the jobs; a $CRACKHPC_CACHE exported in the
    submitting shell (sbatch passes the environment on) wins over it."""
    return f'export CRACKHPC_CACHE="${{CRACKHPC_CACHE:-{cache}}}"'


def apply_profile(raw: dict, profile: Profile | None) -> dict:
    """The sweep's raw YAML mapping with the profile's defaults filled in, before validation."""
    if profile is None or not isinstance(raw, dict):
        return raw
    raw = copy.deepcopy(raw)
    sweep = raw.get("resources")
    if sweep is None:
        sweep = {}
    if not isinstance(sweep, dict):
        return raw  # the sweep's own error comes from its validation
    merged = {**{k: copy.deepcopy(v) for k, v in profile.resources.items()}, **sweep}
    if isinstance(sweep.get("sbatch", {}), dict):
        merged["sbatch"] = {**profile.resources.get("sbatch", {}), **sweep.get("sbatch", {})}
    setup = sweep.get("setup", [])
    if isinstance(setup, list):
        merged["setup"] = [
            *([cache_line(profile.cache)] if profile.cache else []),
            *profile.resources.get("setup", []),
            *setup,
        ]
    raw["resources"] = {k: v for k, v in merged.items() if v != {} and v != []}
    return raw
