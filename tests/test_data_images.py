"""The decoded image cache: the same pixels whatever the worker count, broken files flagged, built once per key."""

import shutil

import numpy as np
import pytest

from crackhpc.data import images
from crackhpc.data.images import ImageCache
from crackhpc.data.split import make_manifest

SPLIT = (0.5, 0.25, 0.25)
CHUNK = 8  # 40 images in 5 chunks, so that two workers really share the decoding


@pytest.fixture
def items(tiny_data):
    return make_manifest(tiny_data, SPLIT, 0)


@pytest.fixture
def decoded(monkeypatch):
    """Paths decoded in this process (with one worker, all of them)."""
    paths = []
    load_rgb = images.load_rgb

    def counting(path, size):
        paths.append(path)
        return load_rgb(path, size)

    monkeypatch.setattr(images, "load_rgb", counting)
    return paths


def test_one_and_two_workers_decode_the_same_pixels(tmp_path, tiny_data, items):
    one = ImageCache.build(items, tiny_data, 32, tmp_path / "one", workers=1, chunk=CHUNK)
    two = ImageCache.build(items, tiny_data, 32, tmp_path / "two", workers=2, chunk=CHUNK)
    assert one.images.shape == (40, 32, 32, 3) and one.ok.all() and two.ok.all()
    np.testing.assert_array_equal(one.images, two.images)
    for k in (0, 17, 39):  # the right image in the right row, not just equal blanks
        np.testing.assert_array_equal(two.images[k], images.load_rgb(tiny_data / items[k].path, 32))


@pytest.mark.parametrize("workers", [1, 2])
def test_corrupt_and_truncated_images_are_flagged_not_raised(tmp_path, tiny_data, workers):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "Positive" / "00003.jpg").write_bytes(b"not a jpeg")
    whole = (data / "Negative" / "00005.jpg").read_bytes()
    (data / "Negative" / "00005.jpg").write_bytes(whole[: len(whole) // 2])
    items = make_manifest(data, SPLIT, 0)
    cache = ImageCache.build(items, data, 32, tmp_path / "cache", workers=workers, chunk=CHUNK)
    broken = {i.path for i, ok in zip(items, cache.ok) if not ok}
    assert broken == {"Positive/00003.jpg", "Negative/00005.jpg"} and cache.n_corrupt == 2


def test_a_second_build_reuses_the_cache(tmp_path, tiny_data, items, decoded):
    first = ImageCache.build(items, tiny_data, 32, tmp_path, workers=1, chunk=CHUNK)
    assert len(decoded) == 40
    second = ImageCache.build(items, tiny_data, 32, tmp_path, workers=1, chunk=CHUNK)
    assert len(decoded) == 40
    np.testing.assert_array_equal(first.images, second.images)


def test_the_cache_is_keyed_by_size_and_manifest(tmp_path, tiny_data, items, decoded):
    ImageCache.build(items, tiny_data, 32, tmp_path, workers=1)
    small = ImageCache.build(items, tiny_data, 16, tmp_path, workers=1)
    assert len(decoded) == 80 and small.images.shape == (40, 16, 16, 3)
    resplit = make_manifest(tiny_data, SPLIT, 1)
    ImageCache.build(resplit, tiny_data, 32, tmp_path, workers=1)
    subset = ImageCache.build(items[:30], tiny_data, 32, tmp_path, workers=1)
    assert len(decoded) == 150 and subset.images.shape == (30, 32, 32, 3)
    ImageCache.build(items, tiny_data, 16, tmp_path, workers=1)
    assert len(decoded) == 150
    assert len(list(tmp_path.glob("images-*px.npy"))) == 4


@pytest.mark.parametrize(
    "name, damage",
    [
        ("images-*px.npy", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])),  # a disk that filled
        ("images-*px.npy", lambda p: p.write_bytes(b"\0" * 100)),  # not an array at all
        ("images-*.ok.npy", lambda p: p.write_bytes(b"garbage")),
    ],
)
def test_a_damaged_cache_is_built_again(tmp_path, tiny_data, items, decoded, name, damage):
    first = np.array(ImageCache.build(items, tiny_data, 32, tmp_path, workers=1, chunk=CHUNK).images)
    (path,) = tmp_path.glob(name)
    damage(path)
    again = ImageCache.build(items, tiny_data, 32, tmp_path, workers=1, chunk=CHUNK)
    assert len(decoded) == 80 and again.ok.all()  # decoded a second time: derived data, no error
    np.testing.assert_array_equal(again.images, first)
