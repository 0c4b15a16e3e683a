"""Photos in: lists, decoding checks (EXIF, modes, broken and oversized files) and the patch grid."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from crackhpc.predict.inputs import Box, PhotoError, expand, grid, open_photo, patches, starts


def test_patch_offsets_cover_every_side_and_the_last_patch_is_flush():
    assert starts(100, 227, 227) == [0]
    assert starts(454, 227, 227) == [0, 227]
    assert starts(500, 227, 227) == [0, 227, 273]
    assert starts(500, 227, 100) == [0, 100, 200, 273]
    boxes = grid(500, 300, 227, 227)
    assert len(boxes) == 3 * 2 and boxes[0] == Box(0, 0, 227, 227) and boxes[-1] == Box(273, 73, 500, 300)
    assert grid(64, 64, 227, 227) == [Box(0, 0, 64, 64)]  # a crop-size image: one patch, itself
    assert grid(600, 100, 227, 227)[-1] == Box(373, 0, 600, 100)  # a strip: patches as high as the photo


def test_expand_reads_folders_lists_and_reports_what_is_missing(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.jpg", "a/b/y.PNG", "a/notes.txt.bak", "a/.hidden.jpg", "a/z.mask.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name, format="PNG") if name.endswith(("jpg", "PNG", "png")) else (
            tmp_path / name
        ).write_text("x")
    listing = tmp_path / "list.txt"
    listing.write_text("# photos\na/x.jpg\n\nmissing.jpg\n")
    photos, errors = expand([str(tmp_path / "a"), str(listing), str(tmp_path / "gone.jpg")])
    # a folder's files before its subfolders'; the listed a/x.jpg counted once
    assert photos == [(tmp_path / "a/x.jpg").resolve(), (tmp_path / "a/b/y.PNG").resolve()]
    assert [e[0] for e in errors] == ["missing.jpg", str(tmp_path / "gone.jpg")]
    assert "line 4: no such file" in errors[0][1]


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def test_exif_orientation_grey_and_rgba_photos_come_out_upright_rgb(tmp_path):
    img = Image.new("RGB", (40, 20), (200, 200, 200))
    img.paste((0, 0, 0), (0, 0, 10, 10))  # a dark corner, top left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    (tmp_path / "rot.jpg").write_bytes(_jpeg(img, exif=exif))
    upright = open_photo(tmp_path / "rot.jpg")
    assert upright.size == (20, 40) and upright.mode == "RGB"
    assert np.asarray(upright)[:10, -10:].mean() < 50  # the dark corner is now top right
    Image.new("L", (30, 30), 90).save(tmp_path / "grey.png")
    Image.new("RGBA", (30, 30), (10, 20, 30, 128)).save(tmp_path / "rgba.png")
    assert np.asarray(open_photo(tmp_path / "grey.png")).shape == (30, 30, 3)
    assert tuple(np.asarray(open_photo(tmp_path / "rgba.png"))[0, 0]) == (10, 20, 30)


def test_broken_and_oversized_files_raise_their_reason(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    data = _jpeg(Image.new("RGB", (300, 300), (120, 130, 140)))
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    Image.new("1", (10_000, 10_000)).save(tmp_path / "huge.png")
    reasons = {}
    for name in ("empty.jpg", "text.jpg", "cut.jpg", "huge.png"):
        with pytest.raises(PhotoError) as info:
            open_photo(tmp_path / name)
        reasons[name] = str(info.value)
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert "unknown format" in reasons["text.jpg"]
    assert reasons["cut.jpg"].startswith("unreadable:") and "truncated" in reasons["cut.jpg"]
    assert "10000x10000 px is 100 megapixels, over the limit of 64" in reasons["huge.png"]


def test_patches_are_resized_like_training_images():
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 150, 3), dtype=np.uint8))
    boxes = grid(150, 100, 50, 50)
    out = patches(photo, boxes, 32)
    assert out.shape == (6, 32, 32, 3) and out.dtype == np.uint8
    expected = np.asarray(photo.crop((50, 50, 100, 100)).resize((32, 32), Image.BILINEAR))
    assert np.array_equal(out[4], expected)
