"""Pre-flight checks of a submission on the login node, before anything waits in a queue:

- ImageNet weights: every pretrained run's file must be in the offline cache (crackhpc.weights).
  A real submission refuses without them; a dry run warns and names the prefetch that fixes it.
- Slurm: `sbatch --test-only` on the very script submitit would submit for a job shape
  (crackhpc.slurm.ask_test_only; the launcher's dry run asks it).
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import WeightsError


def missing_weights(specs: Iterable) -> dict[tuple[str, str], str]:
    """(framework, model) → why its weights are not usable, for each pretrained model of the runs."""
    from .weights import has_file, locate

    missing = {}
    pretrained = (s.train for s in specs if s.train.pretrained and has_file(s.train.framework, s.train.model))
    for key in dict.fromkeys((t.framework, t.model) for t in pretrained):
        try:
            locate(*key)
        except WeightsError as exc:
            missing[key] = str(exc)
    return missing


def prefetch_command(missing: Iterable[tuple[str, str]]) -> str:
    return "crackhpc prefetch --models " + ",".join(f"{framework}:{model}" for framework, model in missing)


def require_weights(specs: Iterable) -> None:
    """A real submission: one line naming what is missing and the prefetch that fetches it."""
    missing = missing_weights(specs)
    if len(missing) == 1:
        raise WeightsError(next(iter(missing.values())))
    if missing:
        raise WeightsError(
            f"pretrained weights not found for {', '.join(' '.join(k) for k in missing)}: run "
            f"`{prefetch_command(missing)}` on the login node, or set `pretrained: false`"
        )


def weights_warnings(specs: Iterable) -> list[str]:
    """A dry run: the problems as warnings, and the command that fixes them all."""
    missing = missing_weights(specs)
    if not missing:
        return []
    return [f"warning: {why}" for why in missing.values()] + [
        f"warning: a real submission refuses these runs; on the login node: {prefetch_command(missing)}"
    ]
