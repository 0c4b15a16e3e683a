"""benchmarks/gpu.sh, the GPU measurements prepared before a GPU is lent: its --smoke run on the CPU
goes through every phase's code (the study's runs through crackhpc's worker, the naive loop, the
tight-loop ceiling, the DDP backend) at toy size, as the script itself is run on the device."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_script_smoke_runs_every_phase_without_tensorflow(tmp_path):
    out = tmp_path / "gpu.md"
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--smoke", "--work", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.with_suffix(".json").read_text())
    assert {name: r["status"] for name, r in results.items()} == dict.fromkeys(
        ("environment", "synth", "study", "naive", "ceiling", "ddp"), "ok"
    )
    study = results["study"]
    # auto is fp32 on a CPU in the tests (conftest: CRACKHPC_CPU_BF16=0), so each fp32 run reuses auto's features
    assert [r["features"] for r in study["runs"]] == ["computed", "reused", "computed", "reused", "off", "off"]
    assert len(study["bf16_vs_fp32"]) == 3 and all(0 <= r["test_acc"] <= 1 for r in study["runs"])
    assert results["ddp"]["backend"] == "gloo" and results["ceiling"]["bf16_img_s"] > 0
    assert results["environment"]["tensorflow_imported"] is False
    assert "## study: ok" in out.read_text()
