"""How long `load_sweep` takes to refuse a grid over the run limit (from the list sizes, before
crossing anything) and to accept one at the limit; a table, no pass/fail (tests/test_config.py
checks the refusal itself).

    python -m benchmarks.config_limits
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from crackhpc.config import MAX_RUNS, load_sweep
from crackhpc.errors import ConfigError

BASE = "name: t\ndata:\n  synthetic: {n: 20, size: 32}\n"
KEYS = ("seed", "epochs", "batch_size", "lr", "input_size")


def timed(path: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    try:
        outcome = f"accepted, {len(load_sweep(path).entries):,} runs"
    except ConfigError:
        outcome = "refused"
    return time.perf_counter() - t0, outcome


def main() -> None:
    values = ", ".join(str(i + 1) for i in range(1000))
    cases = {f"10^{3 * k} runs ({k} list{'s' * (k > 1)} of 1000)": k for k in range(1, len(KEYS) + 1)}
    rows = [("grid", "seconds", "outcome")]
    with tempfile.TemporaryDirectory() as tmp:
        for name, k in cases.items():
            path = Path(tmp) / f"g{k}.yaml"
            path.write_text(BASE + "grid: {" + ", ".join(f"{key}: [{values}]" for key in KEYS[:k]) + "}\n")
            seconds, outcome = timed(path)
            rows.append((name, f"{seconds:.3f}", outcome))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    print(f"load_sweep, limit {MAX_RUNS:,} runs")
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
