import shutil

import numpy as np
from PIL import Image

from crackhpc.data.verify import verify


def test_counts_broken_and_odd_sizes(tiny_data, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(tiny_data, root)
    good = (root / "Positive" / "00001.jpg").read_bytes()
    (root / "Positive" / "00002.jpg").write_bytes(good[: len(good) // 2])  # truncated
    (root / "Negative" / "00003.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.zeros((227, 227, 3), np.uint8)).save(root / "Negative" / "00004.jpg")
    report = verify(root, workers=2)
    assert report.layout == "original"
    assert report.counts == {"all": {"negative": 20, "positive": 20}}
    assert sorted(p for p, _ in report.broken) == ["Negative/00003.jpg", "Positive/00002.jpg"]
    assert report.sizes[(32, 32)] == 37 and report.sizes[(227, 227)] == 1
    text = "\n".join(report.lines())
    assert "unreadable or truncated: 2" in text and "37 images are not 227x227" in text
    assert not report.ok


def test_clean_dataset_is_ok(tiny_data):
    assert verify(tiny_data).ok


def test_empty_class_folder_and_broken_symlinks_fail_verify(tiny_data, tmp_path, capsys):
    from crackhpc.cli import main

    root = tmp_path / "d"
    shutil.copytree(tiny_data, root)
    (root / "Negative" / "gone.jpg").symlink_to(tmp_path / "moved" / "00001.jpg")
    (root / "Negative" / "loop.jpg").symlink_to("loop.jpg")
    assert main(["data", "verify", str(root)]) == 1
    out = capsys.readouterr().out
    assert "broken symlinks, skipped: 2" in out and "Negative/loop.jpg: symlink loop" in out
    assert f"Negative/gone.jpg: dangling symlink (to {tmp_path / 'moved' / '00001.jpg'}" in out
    assert "all    negative=20  positive=20  total=40" in out

    for image in (root / "Positive").iterdir():
        image.unlink()
    assert main(["data", "verify", str(root)]) == 1
    out = capsys.readouterr().out
    assert "error: Positive/ has no images (.jpg, .jpeg, .png)" in out and "positive=0" in out


def test_n_classes_are_listed_and_counted(tmp_path, capsys):
    from crackhpc.cli import main
    from crackhpc.data.synth import synthesize_classes

    root = tmp_path / "damage"
    synthesize_classes(root, ["crack", "spalling", "stain"], 10, size=32, seed=1)
    report = verify(root)
    assert report.ok and report.classes == ("crack", "spalling", "stain")
    assert report.counts == {"all": {"crack": 4, "spalling": 3, "stain": 3}}
    (root / "stain" / "00002.jpg").write_bytes(b"not a jpeg")
    for image in (root / "spalling").iterdir():
        image.unlink()
    assert main(["data", "verify", str(root)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [
        f"{root}: original layout, 3 classes: crack, spalling, stain",
        "  all    crack=4  spalling=0  stain=3  total=7",
    ]
    assert (
        "  error: spalling/ has no images (.jpg, .jpeg, .png): a classifier needs images of every class, and a sweep refuses this dataset"
        in out
    )
    assert "    stain/00002.jpg: UnidentifiedImageError: cannot identify image file" in "\n".join(out)
