"""benchmarks.precision and benchmarks.parity at toy size: every row they write comes out, so a
change to the worker's networks cannot leave a benchmark that fails only when it is next run."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module(name: str, *args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _rows(table: str) -> list[list[str]]:
    """The cells of a markdown table's rows, its header left out."""
    rows = [line.strip("| ").split(" | ") for line in table.splitlines() if line.startswith("| ")]
    return rows[1:]


def _settings(table: str) -> list[tuple[str, str, str]]:
    return [(r[0], r[1], r[2]) for r in _rows(table)]


@pytest.mark.tf
def test_precision_writes_every_setting_of_each_framework(tmp_path):
    pytest.importorskip("tensorflow")
    out = tmp_path / "precision.md"
    _module(
        "precision",
        "--models",
        "resnet18,keras:vgg16",
        "--size",
        "32",
        "--batch",
        "2",
        "--rounds",
        "1",
        "--out",
        str(out),
    )
    settings = _settings(out.read_text())
    # VGG16, not ResNet50: the rows are the same, and tracing ResNet50's training step took a minute
    assert [s for s in settings if s[0] == "keras:vgg16"] == [
        ("keras:vgg16", "features", "float32 as built"),
        ("keras:vgg16", "features", "float32 folded"),
        ("keras:vgg16", "features", "mixed_bfloat16 as built"),
        ("keras:vgg16", "features", "mixed_bfloat16 folded"),
        ("keras:vgg16", "train", "float32"),
        ("keras:vgg16", "train", "mixed_bfloat16"),
    ]
    torch_rows = [s for s in settings if s[0] == "resnet18"]
    assert ("resnet18", "features", "today (fp32 channels_last)") in torch_rows
    assert {s[1] for s in torch_rows} == {"features", "train"} and len(torch_rows) == 11


def test_parity_compares_each_seed_in_both_precisions(tmp_path):
    out = tmp_path / "parity.md"
    _module(
        "parity",
        "--n",
        "60",
        "--seeds",
        "0,1",
        "--threads",
        "1",
        "--frozen-size",
        "32",
        "--trainable-size",
        "32",
        "--epochs",
        "1",
        "--work",
        str(tmp_path / "work"),
        "--out",
        str(out),
    )
    text = out.read_text()
    for kind in ("frozen: efficientnet_lite0", "trainable: resnet18"):
        section = text.split(f"## {kind}")[1].split("## ")[0]
        seeds = [row[0] for row in _rows(section)]
        assert seeds == ["0", "1"], section
        assert "Across seeds (mean ± standard deviation): fp32" in section
