"""What the report reads of a search's study (results/<sweep>/search.db, crackhpc.search): read only,
on the login node or in the report job, never while the controller writes (SQLite serialises them)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..record import SEARCH_DB


@dataclass(frozen=True)
class TrialRow:
    """One trial as the report shows it."""

    number: int
    run_id: str
    state: str  # Optuna's: COMPLETE, PRUNED, FAIL, RUNNING
    value: float | None
    params: dict[str, Any]
    last_step: int | None


@dataclass(frozen=True)
class Search:
    study: Any  # optuna.Study
    metric: str
    direction: str
    sampler: str
    trials: list[TrialRow]

    def best(self) -> TrialRow | None:
        done = [t for t in self.trials if t.state == "COMPLETE" and t.value is not None]
        sign = 1 if self.direction == "maximize" else -1
        return max(done, key=lambda t: (sign * t.value, -t.number), default=None)  # type: ignore[operator]

    def key(self) -> list:
        """What its figures are drawn from: a figure is redrawn when a trial changed."""
        return [[t.number, t.state, t.value, sorted(t.params.items())] for t in self.trials]


def read_search(sweep_dir: str | Path) -> Search | None:
    """The sweep folder's search, or None where it has no search.db. A damaged database raises
    what Optuna (SQLAlchemy) says of it; the report notes it."""
    path = Path(sweep_dir) / SEARCH_DB
    if not path.is_file():
        return None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{path.resolve()}"
    names = optuna.get_all_study_names(storage)
    if not names:
        return None
    study = optuna.load_study(study_name=names[0], storage=storage)
    signature = study.user_attrs.get("search", {})
    rows = [
        TrialRow(
            t.number,
            str(t.user_attrs.get("run_id", "")),
            t.state.name,
            t.value if t.value is not None and math.isfinite(t.value) else None,
            dict(t.params),
            t.last_step,
        )
        for t in study.get_trials(deepcopy=False)
    ]
    return Search(
        study,
        str(signature.get("metric", "value")),
        study.direction.name.lower(),
        str(signature.get("sampler", "")),
        rows,
    )
