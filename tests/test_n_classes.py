"""A dataset of N classes end to end: `crackhpc data synth --classes` → sweep → result.json →
report (macro-F1, per-class scores, the N×N confusion) → predict's map of each patch's top class.

The run (conftest's `learned_classes`): the frozen ImageNet EfficientNet-Lite0, its head trained on
400 synthetic 64 px crops of 4 kinds of damage (crack, spalling, stain, clean). Measured on this
machine: test accuracy 0.925-0.9875 and macro-F1 0.926-0.9875 on the 80 test crops over three
synthetic datasets and two seeds (0.9625 for this one); chance is 1/4. The floor, 0.8, leaves room
for another machine's rounding and still says the model learned the classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from crackhpc import rundir
from crackhpc.data.split import read_manifest
from crackhpc.predict.maps import PALETTE

from .conftest import DAMAGE, LEARNED_SIZE
from .test_predict import cli, rows

CLASSES = sorted(DAMAGE)  # label order: the class folders' names, sorted
FLOOR = 0.8


def _run(sweep: Path) -> Path:
    return next(p for p in sweep.iterdir() if (p / rundir.CONFIG).is_file())


def test_the_run_learns_the_classes_well_above_chance(learned_classes):
    sweep, _ = learned_classes
    run = _run(sweep)
    assert rundir.read_config(run).data.classes == tuple(CLASSES)
    result = rundir.read_result(run)
    print({k: result[k] for k in ("test_acc", "macro_f1", "confusion")})
    assert result["classes"] == CLASSES
    matrix = np.array(result["confusion"])
    assert matrix.shape == (4, 4) and matrix.sum() == result["n_test"] == 80
    assert matrix.sum(axis=1).tolist() == [20, 20, 20, 20]  # stratified: a fifth of each class's 100
    assert np.trace(matrix) / matrix.sum() == pytest.approx(result["test_acc"])
    assert result["test_acc"] >= FLOOR > 1 / len(CLASSES) and result["macro_f1"] >= FLOOR
    for name, row in zip(CLASSES, matrix):
        scores = result["per_class"][name]
        k = CLASSES.index(name)
        assert scores["support"] == row.sum() and scores["recall"] == pytest.approx(row[k] / row.sum())
        assert scores["precision"] == pytest.approx(row[k] / matrix[:, k].sum())
    assert result["macro_f1"] == pytest.approx(np.mean([s["f1"] for s in result["per_class"].values()]))


def test_summary_and_report_show_macro_f1_per_class_scores_and_the_confusion(learned_classes):
    sweep, _ = learned_classes
    result = rundir.read_result(_run(sweep))
    df = pd.read_csv(sweep / "summary.csv")
    [row] = df.to_dict("records")
    columns = list(df.columns)
    assert columns.index("macro_f1") == columns.index("tn") + 1 and pd.isna(row["tp"])
    assert row["macro_f1"] == pytest.approx(result["macro_f1"])
    assert json.loads(row["confusion"]) == result["confusion"] and row["classes"].split() == CLASSES
    for name in CLASSES:
        for key in ("precision", "recall", "f1"):
            assert row[f"{key}_{name}"] == pytest.approx(result["per_class"][name][key])
    comparison = pd.read_csv(sweep / "comparison.csv")
    assert comparison["macro_f1_mean"].tolist() == [pytest.approx(result["macro_f1"])]
    md = (sweep / "report.md").read_text()
    assert "| test macro-F1 |" in md and "## Per class (test split)" in md and "Positive = crack" not in md
    assert "| true \\ predicted | " + " | ".join(CLASSES) + " |" in md
    for name, counts in zip(CLASSES, result["confusion"]):
        assert f"| {name} | " + " | ".join(map(str, counts)) + " |" in md
    assert (sweep / "report" / f"confusion-{_run(sweep).name}.png").is_file()


def _mosaics(run: Path, data: Path, out: Path, n: int = 8) -> dict[str, list[str]]:
    """`n` photos of 2×2 test crops of different classes (PNG: no JPEG loss between the crop and the
    patch); for each photo the class the run gave each crop on its test split (misclassified.csv's
    where it was wrong), in the order predict's grid reads its patches (rows)."""
    test = [i for i in read_manifest(rundir.manifest_of(run)) if i.split == "test"]
    wrong = {r["path"]: r["predicted"] for r in rows(run / rundir.MISCLASSIFIED)}
    by_class = {label: [i for i in test if i.label == label] for label in range(len(CLASSES))}
    out.mkdir()
    given = {}
    for k in range(n):
        items = [by_class[(k + j) % len(CLASSES)][k] for j in range(4)]
        crops = [np.asarray(Image.open(data / i.path).convert("RGB")) for i in items]
        photo = np.concatenate([np.concatenate(crops[:2], 1), np.concatenate(crops[2:], 1)], 0)
        Image.fromarray(photo).save(out / f"mosaic-{k}.png")
        given[str(out / f"mosaic-{k}.png")] = [wrong.get(i.path, CLASSES[i.label]) for i in items]
    return given


def test_predict_maps_each_patch_to_its_top_class_with_a_legend(learned_classes, tmp_path):
    sweep, data = learned_classes
    given = _mosaics(_run(sweep), data, tmp_path / "photos")
    out = tmp_path / "maps"
    code, _, err = cli(
        "predict", _run(sweep), tmp_path / "photos", "--out", out, "--tile", LEARNED_SIZE, "--executor", "debug"
    )
    assert code == 0, err
    summary = rows(out / "summary.csv")
    assert list(summary[0]) == [
        "image", "width", "height", "patches", "top_class", *(f"patches_{c}" for c in CLASSES), "map_csv", "overlay"
    ]  # fmt: skip
    for photo in summary:
        patches = rows(out / photo["map_csv"])
        assert int(photo["patches"]) == len(patches) == 4
        # each crop gets the class the run gave it on its test split
        assert [p["class"] for p in patches] == given[photo["image"]]
        for patch in patches:
            scores = [float(patch[f"p_{c}"]) for c in CLASSES]
            assert patch["class"] == CLASSES[int(np.argmax(scores))] and sum(scores) == pytest.approx(1, abs=1e-5)
        assert sum(int(photo[f"patches_{c}"]) for c in CLASSES) == 4
        # the map: each patch tinted half-and-half with its class's colour over the greyed photo
        with Image.open(out / photo["overlay"]) as im:
            overlay = np.asarray(im.convert("RGB"), np.float32)
        with Image.open(photo["image"]) as im:
            grey = np.asarray(im.convert("L"), np.float32)
        for patch in patches:
            x0, y0, x1, y1 = (int(patch[k]) for k in ("x0", "y0", "x1", "y1"))
            inner = (slice(y0 + 2, y1 - 2), slice(x0 + 2, x1 - 2))
            tint = overlay[inner].reshape(-1, 3).mean(0) - 0.5 * grey[inner].mean()
            nearest = np.argmin([np.abs(tint - 0.5 * np.array(c)).sum() for c in PALETTE[: len(CLASSES)]])
            assert CLASSES[nearest] == patch["class"]
        assert overlay.shape[0] > 2 * LEARNED_SIZE + 30  # the legend and the caption under the map
    page = (out / "index.md").read_text()
    assert "# Class maps: 8 photos" in page and "classes " + ", ".join(CLASSES) in page


def test_a_model_of_n_classes_scores_each_class_and_has_no_crack_probability(learned_classes):
    from crackhpc.errors import CrackhpcError
    from crackhpc.predict.model import load

    sweep, _ = learned_classes
    classifier = load(_run(sweep))
    images = np.zeros((2, 96, 96, 3), np.uint8)
    assert classifier.scores(images).shape == (2, 4)
    with pytest.raises(CrackhpcError, match="a model of clean, crack, spalling, stain, not of cracks"):
        classifier.probabilities(images)


def test_exported_model_gives_every_class_and_says_which_column_is_which(learned_classes, tmp_path):
    import torch

    sweep, data = learned_classes
    run = _run(sweep)
    code, _, err = cli("export", run, "--format", "torchscript", "--out", tmp_path / "export")
    assert code == 0, err
    meta = json.loads((tmp_path / "export" / "model.json").read_text())
    assert meta["classes"] == CLASSES and "crack_class" not in meta
    assert meta["output"]["shape"] == ["N", 4] and "in the order of classes" in meta["output"]["meaning"]
    model = torch.jit.load(str(tmp_path / "export" / meta["file"]))
    wrong = {r["path"]: r["predicted"] for r in rows(run / rundir.MISCLASSIFIED)}
    test = [i for i in read_manifest(rundir.manifest_of(run)) if i.split == "test"][::10]
    images = np.stack(
        [np.asarray(Image.open(data / i.path).convert("RGB").resize((96, 96), Image.BILINEAR)) for i in test]
    )
    probs = model(torch.from_numpy(images)).detach().numpy()
    assert probs.shape == (len(test), 4) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert [meta["classes"][k] for k in probs.argmax(1)] == [wrong.get(i.path, CLASSES[i.label]) for i in test]
