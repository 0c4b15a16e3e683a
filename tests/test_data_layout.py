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
        ("Negative/00001.jpg", 0, None),
        ("Positive/00001.jpg", 1, None),
        ("Positive/00002.jpg", 1, None),
    ]


def test_course_layout_keeps_its_split(tmp_path):
    for split in ("train", "valid", "test"):
        _touch(tmp_path, f"{split}/positive/a.jpg", f"{split}/negative/b.jpg")
    layout, items = list_items(tmp_path)
    assert layout == "course" and len(items) == 6
    assert {(i.split, i.label) for i in items} == {(s, c) for s in ("train", "valid", "test") for c in (0, 1)}


@pytest.mark.parametrize(
    "rels, found",
    [
        (("train/positive/a.jpg", "plain/b.jpg"), "found: plain, train"),  # a split folder, not a class
        (("train/positive/a.jpg", "test/positive/a.jpg"), "found: test, train"),
        ((), "found: no folders"),
    ],
)
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


@pytest.mark.parametrize(
    "rels, empty",
    [
        (("Negative/a.jpg", "Negative/b.jpg"), "Positive"),  # original: no cracks
        (
            [
                f"{s}/{c}/x.jpg"
                for s in ("train", "valid", "test")
                for c in ("positive", "negative")
                if (s, c) != ("test", "negative")
            ],
            "test/negative",
        ),  # course: one folder empty
    ],
)
def test_a_class_folder_without_images_is_an_error(tmp_path, rels, empty):
    _touch(tmp_path, *rels)
    (tmp_path / empty).mkdir(parents=True, exist_ok=True)
    (tmp_path / empty / "notes.txt").write_text("not an image")
    with pytest.raises(
        DataError, match=f"{tmp_path / empty}: no images .* in this class folder; every class needs images"
    ):
        list_items(tmp_path)


def test_one_class_items_cannot_be_split():
    from crackhpc.data.layout import Item
    from crackhpc.data.split import split_items

    with pytest.raises(DataError, match="3 images, none of them positive: a classifier needs images of both classes"):
        split_items([Item(f"Negative/{k}.jpg", 0, None) for k in range(3)], (0.6, 0.2, 0.2), 0)


def test_dangling_and_looping_symlinks_are_skipped_and_listed(tmp_path):
    from crackhpc.data.layout import scan

    _touch(tmp_path, "Positive/a.jpg", "Negative/b.jpg", ".shared/c.jpg")  # hidden: not a class folder
    (tmp_path / "Positive" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "Negative" / "loop.jpg").symlink_to(tmp_path / "Negative" / "loop.jpg")
    (tmp_path / "Negative" / "linked.jpg").symlink_to(tmp_path / ".shared" / "c.jpg")  # a good link is an image
    layout, items = list_items(tmp_path)
    assert [i.path for i in items] == ["Negative/b.jpg", "Negative/linked.jpg", "Positive/a.jpg"]
    found = scan(tmp_path)
    assert [p for p, _ in found.broken_links] == ["Negative/loop.jpg", "Positive/gone.jpg"]
    why = dict(found.broken_links)
    assert why["Negative/loop.jpg"] == "symlink loop"
    assert why["Positive/gone.jpg"] == f"dangling symlink (to {tmp_path / 'nowhere.jpg'}, which does not exist)"


def test_a_class_of_dangling_links_only_is_empty(tmp_path):
    _touch(tmp_path, "Negative/b.jpg")
    (tmp_path / "Positive").mkdir()
    (tmp_path / "Positive" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(DataError, match="Positive: no images"):
        list_items(tmp_path)


def test_a_sweep_on_a_one_class_dataset_stops_before_any_job(tmp_path, write_yaml, tiny_data, capsys):
    import shutil

    from crackhpc.cli import main

    from .conftest import tiny_sweep

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    for image in (data / "Positive").iterdir():
        image.unlink()
    sweep = write_yaml(tiny_sweep(data))
    assert main(["sweep", str(sweep), "--executor", "debug", "--results", str(tmp_path / "results")]) == 2
    [error] = capsys.readouterr().err.splitlines()
    assert error == (
        f"error: {data / 'Positive'}: no images (.jpg, .jpeg, .png) in this class folder; every class "
        f"needs images: add them, or point data.root at the whole dataset (`crackhpc data verify` lists "
        f"what it found)"
    )
    assert not list((tmp_path / "results" / "tiny").glob("*/result.json")), "no run started"


def test_any_number_of_class_folders_labelled_in_sorted_order(tmp_path):
    from crackhpc.data.layout import scan

    _touch(tmp_path, "Spalling/a.jpg", "crack/b.jpg", "crack/c.png", "Clean/d.jpg", ".thumbs/e.jpg")
    found = scan(tmp_path)
    assert (found.layout, found.classes) == ("original", ("clean", "crack", "spalling"))
    assert [(i.path, i.label) for i in found.items] == [
        ("Clean/d.jpg", 0),
        ("crack/b.jpg", 1),
        ("crack/c.png", 1),
        ("Spalling/a.jpg", 2),
    ]


def test_course_layout_of_n_classes(tmp_path):
    from crackhpc.data.layout import scan

    for split in ("train", "valid", "test"):
        _touch(tmp_path, *(f"{split}/{c}/x.jpg" for c in ("stain", "crack", "clean")))
    found = scan(tmp_path)
    assert (found.layout, found.classes) == ("course", ("clean", "crack", "stain"))
    assert {(i.split, i.label) for i in found.items} == {(s, k) for s in ("train", "valid", "test") for k in range(3)}


@pytest.mark.parametrize(
    "rels, error",
    [
        (("crack/a.jpg", "crack/b.jpg"), "{root}: only crack/: a classifier needs at least two classes"),
        (
            [f"{s}/crack/a.jpg" for s in ("train", "valid", "test")],
            "{root}: only crack/: a classifier needs at least two classes",
        ),
        (
            [f"{s}/{c}/a.jpg" for s in ("train", "valid", "test") for c in ("crack", "clean")]
            + ["train/stain/a.jpg", "valid/stain/a.jpg"],
            "{root}: the class folders differ between train, valid and test (test/ lacks stain); "
            "every split needs the same class folders",
        ),
    ],
    ids=["one class", "one class, course layout", "class folders differ between splits"],
)
def test_a_sweep_on_a_dataset_of_one_class_or_odd_class_folders_is_one_line(tmp_path, write_yaml, rels, error, capsys):
    from crackhpc.cli import main

    from .conftest import tiny_sweep

    root = tmp_path / "data"
    _touch(root, *rels)
    sweep = write_yaml(tiny_sweep(root))
    assert main(["sweep", str(sweep), "--executor", "debug", "--results", str(tmp_path / "results")]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: " + error.format(root=root))
    assert not list((tmp_path / "results").glob("tiny/*/result.json")), "no run started"
    assert main(["data", "verify", str(root)]) == 2  # verify says the same
    assert capsys.readouterr().err.splitlines() == [line]


def test_pinned_classes_that_the_dataset_lacks_stop_the_sweep(tmp_path, write_yaml, tiny_data, capsys):
    from crackhpc.cli import main

    from .conftest import tiny_sweep

    sweep = write_yaml(
        tiny_sweep(
            tiny_data, data={"root": str(tiny_data), "split": [0.5, 0.25, 0.25], "classes": ["negative", "crack"]}
        )
    )
    assert main(["sweep", str(sweep), "--executor", "debug", "--results", str(tmp_path / "results")]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == (
        f"error: {sweep}: data.classes: the dataset {tiny_data} has the classes negative, positive, not negative, "
        "crack; fix the list (in label order) or point data.root at the dataset"
    )
    assert not list((tmp_path / "results").glob("tiny/*/result.json")), "no run started"
