"""Tests for the synthetic concrete-crack dataset generator."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from crackhpc.data.synth import render, render_index, synthesize


def _files(root: Path) -> dict[str, bytes]:
    return {
        f"{cls}/{p.name}": p.read_bytes() for cls in ("Positive", "Negative") for p in sorted((root / cls).iterdir())
    }


def test_counts_and_filenames(tmp_path):
    counts = synthesize(tmp_path, 7, size=32, seed=3)
    assert counts == {"Positive": 4, "Negative": 3}
    assert sorted(os.listdir(tmp_path)) == ["Negative", "Positive"]
    assert sorted(os.listdir(tmp_path / "Positive")) == [f"{i:05d}.jpg" for i in range(1, 5)]
    assert sorted(os.listdir(tmp_path / "Negative")) == [f"{i:05d}.jpg" for i in range(1, 4)]


def test_images_decode_as_rgb_of_right_size(tmp_path):
    synthesize(tmp_path, 4, size=48)
    for p in sorted(tmp_path.glob("*/*.jpg")):
        with Image.open(p) as im:
            assert im.format == "JPEG"
            assert im.mode == "RGB"
            assert im.size == (48, 48)


def test_deterministic_byte_identical(tmp_path):
    synthesize(tmp_path / "a", 6, size=40, seed=11)
    synthesize(tmp_path / "b", 6, size=40, seed=11)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 6
    assert a == b
    synthesize(tmp_path / "c", 6, size=40, seed=12)
    c = _files(tmp_path / "c")
    assert all(a[k] != c[k] for k in a)


def test_bigger_dataset_is_superset(tmp_path):
    synthesize(tmp_path / "small", 4, size=32, seed=5)
    synthesize(tmp_path / "big", 10, size=32, seed=5)
    small, big = _files(tmp_path / "small"), _files(tmp_path / "big")
    assert len(big) == 10
    for name, data in small.items():
        assert big[name] == data


def test_rerun_is_idempotent_and_repairs_empty_files(tmp_path):
    synthesize(tmp_path, 4, size=32)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/*.jpg")}
    good = (tmp_path / "Positive" / "00001.jpg").read_bytes()
    (tmp_path / "Positive" / "00001.jpg").write_bytes(b"")
    assert synthesize(tmp_path, 4, size=32) == {"Positive": 2, "Negative": 2}
    assert (tmp_path / "Positive" / "00001.jpg").read_bytes() == good
    for p, mtime in before.items():
        if p.name != "00001.jpg" or p.parent.name != "Positive":
            assert p.stat().st_mtime_ns == mtime
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".jpg"]


def test_workers_do_not_change_output(tmp_path):
    synthesize(tmp_path / "one", 64, size=16, seed=2, workers=1)
    synthesize(tmp_path / "two", 64, size=16, seed=2, workers=2)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_render_shape_and_dtype():
    for size in (16, 33, 64):
        for cracked in (False, True):
            a = render(np.random.default_rng(0), size, cracked=cracked)
            assert a.shape == (size, size, 3)
            assert a.dtype == np.uint8


def _samples(cls: str, k: int = 20, size: int = 64) -> list[np.ndarray]:
    return [render_index(0, cls, i, size) for i in range(1, k + 1)]


def test_not_separable_by_mean_brightness():
    pos = [a.mean() for a in _samples("Positive")]
    neg = [a.mean() for a in _samples("Negative")]
    assert max(neg) > min(pos)
    assert max(pos) > min(neg)
    # the two brightness ranges overlap substantially, not just at one tail
    lo, hi = max(min(pos), min(neg)), min(max(pos), max(neg))
    assert hi - lo > 0.5 * (max(pos + neg) - min(pos + neg))


def _dark_thin_fraction(a: np.ndarray) -> float:
    """Fraction of pixels at least 15% darker than their 7x7 neighbourhood mean."""
    g = Image.fromarray(a).convert("L")
    bg = np.asarray(g.filter(ImageFilter.BoxBlur(3)), np.float32)
    d = (bg - np.asarray(g, np.float32)) / np.maximum(bg, 1.0)
    return float((d > 0.15).mean())


def test_cracks_add_dark_thin_structure():
    pos = np.mean([_dark_thin_fraction(a) for a in _samples("Positive")])
    neg = np.mean([_dark_thin_fraction(a) for a in _samples("Negative")])
    assert pos > 1.5 * neg


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 1},
        {"n": 0},
        {"n": -4},
        {"n": 2.5},
        {"n": 4, "size": 15},
        {"n": 4, "size": 0},
        {"n": 4, "quality": 0},
        {"n": 4, "workers": 0},
    ],
)
def test_bad_args_raise_value_error(tmp_path, kwargs):
    with pytest.raises(ValueError):
        synthesize(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def _kind_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.glob("*/*.jpg"))}


def test_n_classes_of_damage(tmp_path):
    from crackhpc.data.synth import synthesize_classes

    classes = ["crack", "spalling", "stain", "clean"]
    assert synthesize_classes(tmp_path / "a", classes, 10, size=32, seed=3) == {
        "crack": 3,
        "spalling": 3,
        "stain": 2,
        "clean": 2,
    }
    assert sorted(os.listdir(tmp_path / "a")) == sorted(classes)
    synthesize_classes(tmp_path / "b", classes, 10, size=32, seed=3, workers=2)
    assert _kind_files(tmp_path / "a") == _kind_files(tmp_path / "b")  # deterministic, whatever the workers
    synthesize(tmp_path / "c", 4, size=32, seed=3)
    crack_dataset = _kind_files(tmp_path / "c")
    assert not set(_kind_files(tmp_path / "a").values()) & set(crack_dataset.values())  # seeded apart


def test_kinds_of_damage_differ_where_they_should():
    """Spalling breaks the surface over a large patch: far more of the image strays from its median than
    on clean concrete; a crack adds thin dark structure."""

    def stray(a):
        g = a.mean(axis=2)
        return float((np.abs(g - np.median(g)) > 0.2 * np.median(g)).mean())

    clean = [render_index(0, "clean", i, 64) for i in range(1, 21)]
    spalling = [render_index(0, "spalling", i, 64) for i in range(1, 21)]
    crack = [render_index(0, "crack", i, 64) for i in range(1, 21)]
    assert np.mean([stray(a) for a in spalling]) > 3 * np.mean([stray(a) for a in clean])
    assert np.mean([_dark_thin_fraction(a) for a in crack]) > 1.5 * np.mean([_dark_thin_fraction(a) for a in clean])


@pytest.mark.parametrize(
    "args, error",
    [
        (["--classes", "crack,rust"], "classes must be two or more different kinds of crack, spalling, stain"),
        (["--classes", "crack"], "classes must be two or more different kinds"),
        (["--classes", "crack,crack"], "classes must be two or more different kinds"),
        (["--classes", "crack,stain,clean", "--n", "2"], "n must be at least one image per class (3), got 2"),
    ],
)
def test_data_synth_classes_bad_input_is_one_line(tmp_path, args, error, capsys):
    from crackhpc.cli import main

    assert main(["data", "synth", str(tmp_path / "d"), "--size", "32", *args]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: data synth: {error}")
    assert not (tmp_path / "d").exists()
