from pathlib import Path

import pytest

from crackhpc.data.layout import detect, list_items
from crackhpc.errors import DataError


def _touch(root: Path, *rels: str) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")


def test_original_layout(tmp_path):
    _touch(tmp_path, "Positive/00001.jpg", "Positive/00002.jpg", "Negative/00001.jpg", "Negative/notes.txt")
    layout, items = list_items(tmp_path)
    assert layout == "original"
    assert [(i.path, i.label, i.split) for i in items] == [
        ("Negative/00001.jpg", 0, None), ("Positive/00001.jpg", 1, None), ("Positive/00002.jpg", 1, None)]


def test_course_layout_keeps_its_split(tmp_path):
    for split in ("train", "valid", "test"):
        _touch(tmp_path, f"{split}/positive/a.jpg", f"{split}/negative/b.jpg")
    layout, items = list_items(tmp_path)
    assert layout == "course" and len(items) == 6
    assert {(i.split, i.label) for i in items} == {(s, c) for s in ("train", "valid", "test") for c in (0, 1)}


@pytest.mark.parametrize("rels, found", [
    (("cracks/a.jpg", "plain/b.jpg"), "found: cracks, plain"),
    (("train/positive/a.jpg", "test/positive/a.jpg"), "found: test, train"),
    ((), "found: no folders"),
])
def test_other_layouts_are_refused(tmp_path, rels, found):
    _touch(tmp_path, *rels)
    with pytest.raises(DataError, match=f"unknown dataset layout \\({found}\\)"):
        detect(tmp_path)


def test_missing_folder_and_empty_layout(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        detect(tmp_path / "nope")
    (tmp_path / "Positive").mkdir()
    (tmp_path / "Negative").mkdir()
    with pytest.raises(DataError, match="no images"):
        list_items(tmp_path)
