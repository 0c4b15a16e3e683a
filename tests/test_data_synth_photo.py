"""`crackhpc data synth-photo`: large photos from the crops' generator, with their true crack masks."""

from __future__ import annotations

import csv

import numpy as np
from PIL import Image

from crackhpc.cli import main
from crackhpc.data.synth import render_photo


def test_photo_is_a_pure_function_and_its_mask_marks_the_dark_cracks():
    rgb, mask = render_photo(0, 1, 320, 240, scale=0.5)
    again, mask_again = render_photo(0, 1, 320, 240, scale=0.5)
    assert rgb.shape == (240, 320, 3) and rgb.dtype == np.uint8 and mask.shape == (240, 320)
    assert np.array_equal(rgb, again) and np.array_equal(mask, mask_again)
    assert 0.001 < mask.mean() < 0.1  # thin cracks, not an empty or a flooded mask
    grey = rgb.mean(axis=2)
    assert grey[mask].mean() < grey[~mask].mean() - 20  # cracks are darker than the concrete around them


def test_cli_writes_photos_masks_and_index(tmp_path, capsys):
    out = tmp_path / "photos"
    assert main(["data", "synth-photo", str(out), "--n", "3", "--size", "300x200", "--scale", "0.4"]) == 0
    assert "3 photos of 300x200" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "photos.csv")))
    assert [r["photo"] for r in rows] == ["photo-0001.jpg", "photo-0002.jpg", "photo-0003.jpg"]
    for row in rows:
        with Image.open(out / row["photo"]) as photo, Image.open(out / row["mask"]) as mask:
            assert photo.size == mask.size == (300, 200) and photo.mode == "RGB" and mask.mode == "L"
            assert set(np.unique(np.asarray(mask))) <= {0, 255}
            assert float(row["crack_fraction"]) == round(float((np.asarray(mask) > 0).mean()), 6)
    before = (out / "photo-0002.jpg").stat().st_mtime_ns
    assert main(["data", "synth-photo", str(out), "--n", "3", "--size", "300x200", "--scale", "0.4"]) == 0
    assert (out / "photo-0002.jpg").stat().st_mtime_ns == before  # a rerun keeps what is there


def test_cli_rejects_a_bad_size(tmp_path, capsys):
    assert main(["data", "synth-photo", str(tmp_path), "--size", "big"]) == 2
    assert "--size big: give WIDTHxHEIGHT" in capsys.readouterr().err
